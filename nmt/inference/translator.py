"""Text in, text out: a trained checkpoint with its own SentencePiece models.

    translator = Translator.from_checkpoint("model.ckpt", device="cpu")
    translator.translate_text(["A dog runs.", ""])      # -> ["Ein Hund rennt.", ""]
    [tr] = translator.translate(["A dog runs."], Decoding(beam_size=5, n_best=2))
    tr.text, [(h.text, h.score) for h in tr.hypotheses]
    Translator.from_checkpoint(["a.ckpt", "b.ckpt"])     # an ensemble (nmt/decoding/ensemble.py)
    [s] = translator.score(["A dog runs."], ["Ein Hund rennt."])   # s.total, s.normalized(0.6)

Sentences are encoded, cut to ``max_src_len`` pieces, sorted by length into
token-budget batches, decoded with greedy, beam or sampling search
(nmt/decoding/search.py), and returned in input order: one Translation per input, an empty
or whitespace-only input giving an empty text.

``translate`` keeps no state between calls and changes no process-wide setting,
so a server can call it from several threads at once. On the CPU, ``workers``
batches of one call are decoded at once in a thread pool: a batch's small
per-step products and element-wise work use one core better than two cores
share them. That pays off when each worker has its share of torch's threads,
which only the program can decide: the command-line tools call
``torch.set_num_threads(threads // workers)`` once at startup (nmt/inference/translate.py).
The model keeps no state between steps, so concurrent batches cannot interfere:
the results are those of one batch at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from nmt.core.errors import CheckpointError, ConfigError, TokenizerError
from nmt.core.tokens import EOS_ID, PAD_ID
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.ensemble import Ensemble, check_compatible
from nmt.decoding.options import Decoding
from nmt.decoding.search import Hypothesis, SearchModel, length_penalty, score_targets
from nmt.decoding.shortlist import Shortlist, Shortlisted, missing_table
from nmt.model import Seq2Seq, model_from_checkpoint

DEFAULT_MAX_SRC_LEN = 250
DEFAULT_BATCH_TOKENS = 10000

T = TypeVar("T")


@dataclass(frozen=True)
class Candidate:
    """One hypothesis of a translation."""

    text: str
    score: float  # as the search reports it (nmt/decoding/search.py); 0.0 for an empty input
    tokens: list[int]  # target piece ids, without BOS and EOS
    attention: torch.Tensor | None = None  # (len(tokens) + 1, source pieces + EOS) on request


@dataclass(frozen=True)
class PairScore:
    """The model's log-probability of a given target."""

    total: float  # summed over the target's pieces and the EOS
    length: int  # the target's pieces + EOS

    def normalized(self, alpha: float) -> float:
        """``total`` / GNMT length penalty: beam search's score for this output."""
        return self.total / length_penalty(self.length, alpha)


@dataclass(frozen=True)
class Translation:
    """The hypotheses of one input sentence, best first (``decoding.n_best`` of them at
    most; an empty input gets ``n_best`` empty ones)."""

    source: str
    hypotheses: list[Candidate]
    source_pieces: list[str] = field(default_factory=list)  # with attention: + "</s>"
    truncated: bool = False  # the source was longer than max_src_len pieces and was cut

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""

    @property
    def texts(self) -> list[str]:
        return [h.text for h in self.hypotheses]


class Translator:
    """A model and its tokenizers, ready to translate text."""

    def __init__(self, model: Seq2Seq | Ensemble | SearchModel, src_tokenizer: Tokenizer,
                 tgt_tokenizer: Tokenizer, device: str | torch.device = "cpu",
                 max_src_len: int = DEFAULT_MAX_SRC_LEN, workers: int = 1) -> None:
        """``max_src_len``: source pieces kept per input, EOS not counted; longer inputs
        are cut and flagged ``truncated``. ``workers``: batches decoded at once on the
        CPU (see the module docstring); a GPU decodes one batch at a time."""
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {workers!r}")
        if not isinstance(max_src_len, int) or max_src_len < 1:
            raise ConfigError("max_src_len must be a positive integer (source pieces kept "
                              f"per input), got {max_src_len!r}")
        if isinstance(model, nn.Module):  # an exported model (nmt/export) runs as it is
            model.to(device).eval()
        self.model = model
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.device = torch.device(device)
        self.max_src_len = max_src_len
        self.workers = workers if self.device.type == "cpu" else 1
        self.shortlist: Shortlist | None = None  # decoding.shortlist's table
        self.origin = "this model"  # what errors name
        self.languages: dict[str, str] | None = None  # the checkpoint's {"src", "tgt"} tags

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | Sequence[str | os.PathLike],
                        device: str | torch.device = "cpu",
                        max_src_len: int = DEFAULT_MAX_SRC_LEN, workers: int = 1
                        ) -> Translator:
        """One checkpoint, or a list of them: an ensemble (nmt/decoding/ensemble.py), whose
        members must share both vocabularies. A list of one is the single model. A
        directory is a model written by export.py (nmt/export), run by onnxruntime."""
        paths = [str(path)] if isinstance(path, str | os.PathLike) else [str(p) for p in path]
        if not paths:
            raise ConfigError("checkpoint: an empty list; give one checkpoint or several")
        if any(Path(p).is_dir() for p in paths):
            if len(paths) > 1:
                raise ConfigError("checkpoint: an exported model (a directory) translates "
                                  "alone; ensembles are of .ckpt checkpoints")
            from nmt.export import load_exported

            exported, src, tgt = load_exported(paths[0], device)
            translator = cls(exported, src, tgt, device, max_src_len, workers)
            translator.origin = paths[0]
            return translator
        ckpts = [load_checkpoint(p, "cpu") for p in paths]
        for ckpt, p in zip(ckpts, paths, strict=True):
            if not ckpt["tokenizers"].get("src"):
                raise CheckpointError(f"{p}: an image captioning model, not a translation "
                                      "model; use caption.py")
        check_compatible(ckpts, paths)
        # CheckpointError naming the file that does not fit
        models = [model_from_checkpoint(c, p) for c, p in zip(ckpts, paths, strict=True)]
        try:
            src = Tokenizer(ckpts[0]["tokenizers"]["src"])
            tgt = Tokenizer(ckpts[0]["tokenizers"]["tgt"])
        except (KeyError, TypeError, ValueError, RuntimeError, TokenizerError) as e:
            raise CheckpointError(f"{paths[0]}: the checkpoint does not fit this toolkit's "
                                  f"model ({str(e).splitlines()[0]})") from None
        model = models[0] if len(models) == 1 else Ensemble(models)
        translator = cls(model, src, tgt, device, max_src_len, workers)
        if ckpts[0].get("shortlist") is not None:  # ensemble members share the vocabularies
            translator.shortlist = Shortlist.from_state(
                ckpts[0]["shortlist"], src.vocab_size, tgt.vocab_size, paths[0]).to(device)
        translator.origin = paths[0]
        translator.languages = ckpts[0].get("languages")
        return translator

    # -- translation ---------------------------------------------------------------------

    def translate(self, sentences: list[str], decoding: Decoding | None = None, *,
                  attention: bool = False, batch_tokens: int = DEFAULT_BATCH_TOKENS
                  ) -> list[Translation]:
        """Every hypothesis of every sentence, in input order; with ``attention``, also
        each hypothesis' attention weights and the source pieces.

        A batch holds at most ``batch_tokens / beam_size`` source tokens, padding
        included: its (sentences x beams) decoder rows attend over about
        ``batch_tokens`` source positions whatever the beam size.
        """
        decoding = decoding or Decoding()
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        ids = self.src_tokenizer.encode([sentences[i] for i in todo]) if todo else []
        truncated = [len(seq) > self.max_src_len for seq in ids]
        ids = [seq[: self.max_src_len] for seq in ids]
        hyps = self._decode(ids, decoding, attention, batch_tokens)
        texts = iter(self.tgt_tokenizer.decode([h.tokens for hs in hyps for h in hs]))
        empty = [Candidate("", 0.0, [])] * decoding.n_best
        results = [Translation(s, empty) for s in sentences]
        for j, i in enumerate(todo):
            found = [Candidate(next(texts), h.score, h.tokens, h.attention) for h in hyps[j]]
            # Pieces label the attention's columns: only plots and the like need them.
            pieces = [*self.src_tokenizer.pieces(ids[j]), "</s>"] if attention else []
            results[i] = Translation(sentences[i], found, pieces, truncated[j])
        return results

    def translate_text(self, sentences: list[str], decoding: Decoding | None = None, *,
                       batch_tokens: int = DEFAULT_BATCH_TOKENS) -> list[str]:
        """The best translation of each sentence, in input order."""
        return [t.text for t in self.translate(sentences, decoding, batch_tokens=batch_tokens)]

    def translate_stream(self, lines: Iterable[str], decoding: Decoding | None = None, *,
                         batch_tokens: int = DEFAULT_BATCH_TOKENS, chunk_size: int = 2000,
                         attention_first: int = 0) -> Iterator[Translation]:
        """Translate an iterable of lines chunk by chunk: memory stays flat for any input.

        Attention weights are kept for chunks that hold one of the first
        ``attention_first`` lines.
        """
        chunk: list[str] = []
        done = 0
        for line in lines:
            chunk.append(line)
            if len(chunk) >= chunk_size:
                yield from self.translate(chunk, decoding, batch_tokens=batch_tokens,
                                          attention=done < attention_first)
                done += len(chunk)
                chunk = []
        if chunk:
            yield from self.translate(chunk, decoding, batch_tokens=batch_tokens,
                                      attention=done < attention_first)

    # -- scoring -------------------------------------------------------------------------

    def score(self, sources: list[str], targets: list[str], *,
              batch_tokens: int = DEFAULT_BATCH_TOKENS) -> list[PairScore]:
        """The model's log-probability of each target given its source, in input order
        (sources cut to ``max_src_len`` pieces as for translation; targets whole)."""
        if len(sources) != len(targets):
            raise ConfigError(f"{len(sources)} sources but {len(targets)} targets")
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        src_ids = [seq[: self.max_src_len] for seq in self.src_tokenizer.encode(sources)]
        tgt_ids = self.tgt_tokenizer.encode(targets)
        lengths = np.fromiter((max(len(s), len(t)) + 1
                               for s, t in zip(src_ids, tgt_ids, strict=True)),
                              dtype=np.int64, count=len(src_ids))
        totals = [0.0] * len(sources)

        def run(batch: np.ndarray) -> tuple[np.ndarray, list[float]]:
            src, src_lengths = pad_sources([src_ids[j] for j in batch], self.device)
            tgt, _ = pad_sources([tgt_ids[j] for j in batch], self.device)  # ids + EOS
            return batch, score_targets(self.model, src, src_lengths, tgt).tolist()

        batches = length_batches(lengths, batch_tokens)
        for batch, found in _run_parallel(run, batches, self.workers,
                                          cost=lambda b: len(b) * int(lengths[b].max())):
            for j, total in zip(batch, found, strict=True):
                totals[j] = total
        return [PairScore(total, len(t) + 1) for total, t in zip(totals, tgt_ids, strict=True)]

    def _decode(self, ids: list[list[int]], decoding: Decoding, attention: bool,
                batch_tokens: int) -> list[list[Hypothesis]]:
        """The hypotheses of every id sequence, decoded in batches of similar length."""
        lengths = np.fromiter((len(seq) + 1 for seq in ids), dtype=np.int64, count=len(ids))
        beams = 1 if decoding.sampling else decoding.beam_size
        batches = length_batches(lengths, max(batch_tokens // beams, 1))
        # A generator per call: concurrent calls draw the same samples as sequential ones.
        generator = (torch.Generator(device=self.device).manual_seed(decoding.seed)
                     if decoding.sampling else None)

        if decoding.shortlist and self.shortlist is None:
            raise missing_table(self.origin)

        def run(batch: np.ndarray) -> tuple[np.ndarray, list[list[Hypothesis]]]:
            src, src_lengths = pad_sources([ids[j] for j in batch], self.device)
            source = SourceBatch(src, src_lengths)
            if not decoding.shortlist:
                return batch, decode(self.model, source, decoding, attention, generator)
            assert self.shortlist is not None
            model = Shortlisted(self.model, *self.shortlist.candidates(src))
            return batch, model.to_ids(decode(model, source, decoding, attention, generator))

        # Sampling draws from one generator: one batch at a time, in a fixed order.
        workers = 1 if decoding.sampling else self.workers
        hyps: list[list[Hypothesis]] = [[] for _ in ids]
        for batch, found in _run_parallel(run, batches, workers,
                                          cost=lambda b: len(b) * int(lengths[b].max())):
            for j, hs in zip(batch, found, strict=True):
                hyps[j] = hs
        return hyps


def length_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices sorted by length (ties in input order), cut greedily into batches whose
    padded size, rows x longest row, stays within ``budget``; a longer row goes alone."""
    order = np.argsort(lengths, kind="stable")
    batches = []
    begin = 0
    for i, j in enumerate(order):
        # Sorted ascending: row i is the longest so far of the batch it would join.
        if i > begin and (i - begin + 1) * int(lengths[j]) > budget:
            batches.append(order[begin:i])
            begin = i
    if begin < len(order):
        batches.append(order[begin:])
    return batches


def pad_sources(ids: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids with EOS appended, right-padded: (batch, longest + 1) and the lengths."""
    lengths = np.fromiter((len(seq) + 1 for seq in ids), dtype=np.int64, count=len(ids))
    src = np.full((len(ids), int(lengths.max())), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(ids):
        src[row, : len(seq)] = seq
        src[row, len(seq)] = EOS_ID
    return torch.from_numpy(src).to(device), torch.from_numpy(lengths).to(device)


def _run_parallel(fn: Callable[[np.ndarray], T], batches: list[np.ndarray], workers: int,
                  cost: Callable[[np.ndarray], int]) -> Iterator[T]:
    """``fn`` on every batch, ``workers`` at a time in a pool of this call's own; results
    in the order of submission, the largest batches (by ``cost``) first so that none of
    them starts last. One worker: in the given order, on the caller's thread.

    Thread counts are left alone: a new thread takes torch's process-wide setting,
    which the program sets once (see the module docstring).
    """
    workers = min(workers, len(batches))
    if workers <= 1:
        yield from map(fn, batches)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nmt-decode")
    try:
        yield from pool.map(fn, sorted(batches, key=cost, reverse=True))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
