"""From a data config to encoded splits: fetch, train tokenizers, encode, cache.

``prepare(data_cfg, tokenizer_cfg)`` does all the work once and caches it:

    <root>/<corpus>/                    downloaded catalog files
    <root>/<name>/spm/<key>/            SentencePiece model(s), key = train data + settings
    <root>/<name>/encoded/<key>/<split> encoded ids, key = split data + tokenizers + cleaning

Later calls find everything in the cache and only memory-map the encoded ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from nmt.core.errors import ConfigError, DataError
from nmt.data.catalog import fetch_split
from nmt.data.corpus import CleanConfig, ParallelFiles, read_lines, read_parallel
from nmt.data.dataset import FORMAT_VERSION, ParallelDataset, encode_split
from nmt.data.sampler import TokenBatchSampler
from nmt.data.tokenizer import Tokenizer, TokenizerConfig, load_or_train

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DataclassT = TypeVar("DataclassT", bound="DataclassInstance")  # what from_dict builds

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataConfig:
    """Where a language pair's train/valid/test data come from.

    Either ``corpus`` names a catalog corpus and ``splits`` maps train/valid/test to
    its split names, or ``corpus`` is None and ``files`` maps them to
    ``{src: path, tgt: path}``.
    """

    name: str
    src_lang: str
    tgt_lang: str
    corpus: str | None = None
    splits: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, dict[str, str] | None] = field(default_factory=dict)
    root: str = "data"
    local_dir: str | None = None
    clean: dict[str, Any] = field(default_factory=dict)

    def clean_config(self) -> CleanConfig:
        return from_dict(CleanConfig, self.clean, "data.clean")

    def resolve(self) -> dict[str, ParallelFiles]:
        """Local, verified paths of every configured split."""
        if self.corpus is not None:
            return {
                split: fetch_split(self.corpus, name, self.src_lang, self.tgt_lang,
                                   self.root, self.local_dir)
                for split, name in self.splits.items() if name is not None
            }
        resolved = {}
        for split, sides in self.files.items():
            if sides is None or sides.get("src") is None:
                continue
            for side in ("src", "tgt"):
                if sides.get(side) in (None, "", "???"):
                    raise ConfigError(f"data.files.{split}.{side} is not set")
                if not Path(sides[side]).is_file():
                    raise DataError(f"{sides[side]}: file not found (data.files.{split}.{side})")
            resolved[split] = ParallelFiles(Path(sides["src"]), Path(sides["tgt"]))
        return resolved

    def check(self) -> None:
        """Fail fast on a config that cannot work, before any data is touched."""
        for key in ("name", "src_lang", "tgt_lang"):
            if getattr(self, key) in (None, "", "???"):
                raise ConfigError(f"data.{key} is not set")
        if self.corpus is None and not self.files:
            raise ConfigError("data: set either corpus (a catalog corpus) or files")
        unknown = set(self.splits if self.corpus is not None else self.files) - set(SPLITS)
        if unknown:
            raise ConfigError(
                f"data: unknown split(s) {sorted(unknown)}; valid splits: {', '.join(SPLITS)}"
            )
        self.clean_config()  # raises on unknown keys or bad values


def from_dict(cls: type[DataclassT], values: Mapping[str, Any] | None, where: str) -> DataclassT:
    """Build a dataclass from a mapping, naming unknown keys and the valid ones."""
    values = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


@dataclass
class PreparedData:
    """Everything ``prepare`` produced: tokenizers, encoded splits and their sources."""

    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    joint: bool
    files: dict[str, ParallelFiles]
    datasets: dict[str, ParallelDataset]
    timings: dict[str, float]
    encoded_sentences: int = 0  # sentences encoded by this call (0 when all was cached)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(data_cfg: DataConfig | Mapping[str, Any],
            tokenizer_cfg: TokenizerConfig | Mapping[str, Any]) -> PreparedData:
    """Fetch, train tokenizers and encode every split, using the cache where it can."""
    if not isinstance(data_cfg, DataConfig):
        data_cfg = from_dict(DataConfig, data_cfg, "data")
    if not isinstance(tokenizer_cfg, TokenizerConfig):
        tokenizer_cfg = from_dict(TokenizerConfig, tokenizer_cfg, "tokenizer")
    data_cfg.check()
    clean = data_cfg.clean_config()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    files = data_cfg.resolve()
    if "train" not in files:
        raise ConfigError("data: no training split configured")
    timings["fetch_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train = files["train"]
    base = Path(data_cfg.root) / data_cfg.name
    spm_dir = base / "spm" / tokenizer_cfg.key(train.fingerprint())
    if tokenizer_cfg.joint:
        src_tok = tgt_tok = load_or_train(spm_dir, "joint", _both_sides(train), tokenizer_cfg)
    else:
        src_tok = load_or_train(spm_dir, "src", read_lines(train.src), tokenizer_cfg)
        tgt_tok = load_or_train(spm_dir, "tgt", read_lines(train.tgt), tokenizer_cfg)
    timings["tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    datasets, encoded = {}, 0
    for split, pf in files.items():
        split_clean = clean if split == "train" else None  # dev/test are never filtered
        key = _key(FORMAT_VERSION, pf.fingerprint(), src_tok.digest, tgt_tok.digest,
                   dataclasses.asdict(split_clean) if split_clean else None)
        out = base / "encoded" / key / split
        if not (out / "meta.json").is_file():
            log.info("encoding %s split of %s", split, data_cfg.name)
            stats = encode_split(pf, src_tok, tgt_tok, out, clean=split_clean)
            encoded += stats.sentences
        datasets[split] = ParallelDataset(out)
        if split == "train":
            log.info("cleaning %s: %s", data_cfg.name, datasets[split].clean_report)
    timings["encode_s"] = time.perf_counter() - t0
    return PreparedData(src_tok, tgt_tok, tokenizer_cfg.joint, files, datasets, timings, encoded)


def _both_sides(files: ParallelFiles) -> Iterator[str]:
    for src, tgt in read_parallel(files.src, files.tgt):
        yield src
        yield tgt


def padding_ratio(sampler: TokenBatchSampler, epoch: int = 0) -> float:
    """Padding tokens / all tokens of the padded source and target tensors of one epoch."""
    real = padded = 0
    for b in sampler.batches(epoch):
        s, t = sampler.src_lengths[b], sampler.tgt_lengths[b]
        real += int(s.sum() + t.sum())
        padded += len(b) * int(s.max() + t.max())
    return 1.0 - real / padded if padded else 0.0


def describe(prepared: PreparedData, max_tokens: int) -> dict[str, Any]:
    """A summary of prepared data: sizes, vocabularies, lengths, batches, padding."""
    summary: dict[str, Any] = {
        "tokenizer": "joint" if prepared.joint else "separate",
        "src_vocab": prepared.src_tokenizer.vocab_size,
        "tgt_vocab": prepared.tgt_tokenizer.vocab_size,
    }
    for split, ds in prepared.datasets.items():
        summary[split] = {
            "pairs": len(ds),
            "src_tokens": int(ds.src_lengths.sum()),
            "tgt_tokens": int(ds.tgt_lengths.sum()),
            "src_len_mean": round(float(np.mean(ds.src_lengths)), 2) if len(ds) else 0.0,
            "tgt_len_mean": round(float(np.mean(ds.tgt_lengths)), 2) if len(ds) else 0.0,
        }
    train = prepared.datasets["train"]
    summary["train"]["clean"] = train.clean_report.to_dict()
    sampler = TokenBatchSampler(train.src_lengths + 1, train.tgt_lengths + 1, max_tokens)
    summary["train"]["batches"] = len(sampler)
    summary["train"]["padding_ratio"] = round(padding_ratio(sampler), 4)
    return summary
