"""SentencePiece tokenizers: train, cache, load, encode, decode.

Special ids are fixed for every model we train or load: pad 0, unk 1, bos 2,
eos 3. A model's bytes (its serialized proto) are all that is needed to rebuild
it, which is how checkpoints carry their tokenizers.

Text is normalized by SentencePiece's default rule, ``nmt_nfkc``: Unicode NFKC (so
full-width Latin letters and digits become ASCII, half-width katakana full-width) plus
its whitespace and control-character rules. ``character_coverage: auto`` (the default)
is 0.9995, SentencePiece's advice for large alphabets, when Han, kana or Hangul make up
at least ``LARGE_ALPHABET_SHARE`` of the characters of the first ``PROBE_SENTENCES`` of
the training sample, and 1.0 otherwise; the model records the value it was trained with.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import sentencepiece as spm

from nmt.core.errors import TokenizerError
from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)

MODEL_TYPES = ("unigram", "bpe", "char", "word")
MAX_NBEST = 512  # as SentencePiece's own sampler allows
AUTO = "auto"
LARGE_ALPHABET_COVERAGE = 0.9995
LARGE_ALPHABET_SHARE = 0.05  # of the probed characters, spaces not counted
PROBE_SENTENCES = 100_000
# Han (with extensions and compatibility ideographs), kana, Hangul (syllables and jamo).
_LARGE_ALPHABETS = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf"
                              "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
                              "\U00020000-\U0003134f]")


def auto_coverage(sentences: list[str]) -> float:
    """``character_coverage`` for ``auto``: see the module docstring."""
    chars = sum(len(s) - s.count(" ") for s in sentences)
    large = sum(len(_LARGE_ALPHABETS.findall(s)) for s in sentences)
    return LARGE_ALPHABET_COVERAGE if chars and large / chars >= LARGE_ALPHABET_SHARE else 1.0


class Tokenizer:
    """A SentencePiece model with our fixed special ids."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_proto)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"not a valid SentencePiece model ({e})") from None
        expected = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
        actual = {"pad": self.sp.pad_id(), "unk": self.sp.unk_id(),
                  "bos": self.sp.bos_id(), "eos": self.sp.eos_id()}
        if actual != expected:
            raise TokenizerError(
                f"SentencePiece model has special ids {actual}, expected {expected}; "
                "train it with pad_id=0 unk_id=1 bos_id=2 eos_id=3"
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: SentencePiece model not found")
        try:
            return cls(path.read_bytes())
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        _atomic_write(Path(path), self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def character_coverage(self) -> float | None:
        """The character coverage the model was trained with (None: not recorded)."""
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf: only here

        proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
        proto.ParseFromString(self.model_proto)
        spec = proto.trainer_spec
        return round(spec.character_coverage, 6) if spec.HasField("character_coverage") else None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model_proto).hexdigest()[:16]

    def encode(self, texts: list[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of each text, without bos/eos."""
        return self.sp.encode(texts, out_type=int, num_threads=num_threads)

    def encode_pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Detokenized text of each id sequence; special ids are skipped."""
        return self.sp.decode([[i for i in seq if i > EOS_ID] for seq in ids])

    def pieces(self, ids: list[int]) -> list[str]:
        """The piece of each id, special ids included (e.g. to label attention plots)."""
        return self.sp.id_to_piece([int(i) for i in ids])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.model_proto == other.model_proto

    def __hash__(self) -> int:
        return hash(self.model_proto)


@dataclass(frozen=True)
class SamplingConfig:
    """Subword regularisation (Kudo, 2018): training sentences segmented anew every epoch
    (nmt.data.subword_sampling), for unigram models.

    Each segmentation is drawn from all of them (``nbest`` -1, the whole lattice) or from
    the ``nbest`` best, with probability proportional to p ** ``alpha``: the smaller
    ``alpha``, the more varied (and longer) the segmentations. Validation, test and
    translation always take the best segmentation.
    """

    enabled: bool = False
    alpha: float = 0.2
    nbest: int = -1

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise TokenizerError(f"tokenizer.sampling.alpha must be in (0, 1], got {self.alpha}")
        if self.nbest != -1 and not 2 <= self.nbest <= MAX_NBEST:
            raise TokenizerError(f"tokenizer.sampling.nbest must be -1 (the whole lattice) or "
                                 f"2..{MAX_NBEST}, got {self.nbest}")

    @classmethod
    def of(cls, values: Mapping[str, object]) -> SamplingConfig:
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TokenizerError(f"tokenizer.sampling: unknown key(s) {unknown}; "
                                 f"valid keys: {', '.join(names)}")
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TokenizerConfig:
    """How to train SentencePiece. ``joint`` shares one model between both sides.

    ``sampling`` is how the training data uses the model, not part of it: it is left
    out of ``key``, so turning it on or off reuses the cached model.
    """

    joint: bool = True
    vocab_size: int = 8000
    model_type: str = "unigram"
    character_coverage: float | str = AUTO  # or a share of characters in (0, 1]
    input_sentence_size: int = 1_000_000  # sentences sampled for training; 0 = all
    seed: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sampling, Mapping):  # from a config file
            object.__setattr__(self, "sampling", SamplingConfig.of(self.sampling))
        if self.model_type not in MODEL_TYPES:
            raise TokenizerError(
                f"unknown tokenizer model_type {self.model_type!r}; "
                f"valid choices: {', '.join(MODEL_TYPES)}"
            )
        if self.vocab_size <= EOS_ID + 1:
            raise TokenizerError(f"tokenizer vocab_size must be > 4, got {self.vocab_size}")
        coverage = self.character_coverage
        if coverage != AUTO and (isinstance(coverage, bool | str) or not 0 < coverage <= 1):
            raise TokenizerError(f"tokenizer character_coverage must be auto or in (0, 1], "
                                 f"got {coverage!r}")
        if self.input_sentence_size < 0:
            raise TokenizerError("tokenizer input_sentence_size must be >= 0")
        if self.sampling.enabled and self.model_type != "unigram":
            raise TokenizerError(f"tokenizer.sampling needs model_type=unigram (segmentations "
                                 f"with probabilities), not {self.model_type}")

    def key(self, data_fingerprint: str) -> str:
        """The cache key of the trained model: the training data and every setting that
        changes the model (not ``sampling``)."""
        settings = {k: v for k, v in asdict(self).items() if k != "sampling"}
        blob = json.dumps({"data": data_fingerprint, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class VocabularyTooLarge(TokenizerError):
    """The training sentences allow at most ``limit`` pieces (None: not known)."""

    def __init__(self, limit: int | None, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def train_sentencepiece(sentences: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    """Train one SentencePiece model on the given sentences (empty ones are skipped)."""
    writer = io.BytesIO()
    count = 0
    sentences, coverage = iter(sentences), cfg.character_coverage
    if coverage == AUTO:
        head = list(itertools.islice(sentences, PROBE_SENTENCES))
        coverage = auto_coverage(head)
        log.info("tokenizer character_coverage auto: %s", coverage)
        sentences = itertools.chain(head, sentences)

    def nonempty() -> Iterator[str]:
        nonlocal count
        for s in sentences:
            if s.strip():
                count += 1
                yield s

    spm.set_random_generator_seed(cfg.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=nonempty(),
            model_writer=writer,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=coverage,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=1_000_000,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg)
        if needed:  # the characters to cover outnumber the pieces (a large alphabet)
            raise TokenizerError(
                f"tokenizer vocab_size={cfg.vocab_size} is too small for the "
                f"{needed.group(1)} characters this training data needs at "
                f"character_coverage={coverage}; raise tokenizer.vocab_size above "
                f"{needed.group(1)} or lower tokenizer.character_coverage") from None
        limit = re.search(r"value <= (\d+)", msg)
        if "Vocabulary size" in msg:
            raise VocabularyTooLarge(int(limit.group(1)) if limit else None,
                f"tokenizer vocab_size={cfg.vocab_size} is too large for this training data "
                f"({count} sentences); lower tokenizer.vocab_size"
                + (f" to at most {limit.group(1)}" if limit else "")
            ) from None
        raise TokenizerError(f"SentencePiece training failed: {msg.strip()}") from None
    if count == 0:
        raise TokenizerError("no non-empty sentences to train the tokenizer on")
    return Tokenizer(writer.getvalue())


def load_or_train(cache_dir: Path, name: str, sentences: Iterable[str], cfg: TokenizerConfig
                  ) -> Tokenizer:
    """Load ``cache_dir/name.model`` or train it from ``sentences`` and save it there."""
    path = cache_dir / f"{name}.model"
    if path.is_file():
        return Tokenizer.load(path)
    log.info("training SentencePiece model %s (vocab %d, %s)", path, cfg.vocab_size,
             cfg.model_type)
    tok = train_sentencepiece(sentences, cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    return tok


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
