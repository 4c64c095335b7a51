"""From a data config to encoded splits: fetch, train tokenizers, encode, cache.

``prepare(data_cfg, tokenizer_cfg)`` does all the work once and caches it:

    <root>/<corpus>/                    downloaded catalog files
    <root>/<name>/spm/<key>/            SentencePiece model(s), key = train data + settings
    <root>/<name>/encoded/<key>/<split> encoded ids, key = split data + tokenizers + cleaning
                                        (train: also its co-occurrence counts)

Later calls find everything in the cache and only memory-map the encoded ids. Every
training corpus of a list (nmt/data/mixing.py) has a cache of its own.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nmt.core.errors import ConfigError, DataError
from nmt.core.languages import check_tag
from nmt.data.catalog import fetch_split
from nmt.data.cooccurrence import FILE as COUNTS_FILE
from nmt.data.cooccurrence import Counts, count_split
from nmt.data.corpus import ParallelFiles, read_lines, read_parallel
from nmt.data.dataset import ParallelDataset
from nmt.data.encode import encode_split
from nmt.data.filters import CleanConfig, check_languages
from nmt.data.mixing import CorpusSpec, MixedDataset, line_count, shares, weighted_sample
from nmt.data.store import FORMAT_VERSION
from nmt.data.tokenizer import Tokenizer, TokenizerConfig, load_or_train
from nmt.data.workers import all_cores

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
    ``{src: path, tgt: path}``; ``corpora`` lists several training corpora instead
    of ``files.train`` (nmt/data/mixing.py).
    ``workers`` processes encode the data (None: all cores).
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
    corpora: list[Any] | None = None  # several training corpora, instead of files.train
    workers: int | None = None
    temperature: float | None = None  # several training corpora: p ~ (n / N) ** (1 / T)

    def clean_config(self) -> CleanConfig:
        return from_dict(CleanConfig, self.clean, "data.clean")

    def resolve(self) -> dict[str, ParallelFiles]:
        """Local, verified paths of every configured split (train: its first corpus)."""
        if self.corpus is not None:
            return {
                split: fetch_split(self.corpus, name, self.src_lang, self.tgt_lang,
                                   self.root, self.local_dir)
                for split, name in self.splits.items() if name is not None
            }
        resolved = {}
        for split, sides in self.files.items():
            if split == "train" and self.corpora:
                continue
            if sides is None or (isinstance(sides, Mapping) and sides.get("src") in (None, "???")):
                continue
            if split == "train":
                resolved[split] = self.training_corpora()[0][1]
                continue
            resolved[split] = _checked(sides, f"data.files.{split}")
        if self.corpora:
            resolved["train"] = self.training_corpora()[0][1]
        return resolved

    def training_corpora(self) -> list[tuple[CorpusSpec, ParallelFiles]]:
        """Every training corpus with its verified paths (a catalog corpus: one)."""
        if self.corpus is not None:
            files = self.resolve()["train"]
            return [(CorpusSpec("train", str(files.src), str(files.tgt)), files)]
        if self.corpora:
            specs = CorpusSpec.parse(list(self.corpora), "data.corpora")
            return [(spec, _checked({"src": spec.src, "tgt": spec.tgt}, f"data.corpora[{k}]"))
                    for k, spec in enumerate(specs)]
        specs = CorpusSpec.parse(self.files.get("train"), "data.files.train")
        return [(specs[0], _checked({"src": specs[0].src, "tgt": specs[0].tgt},
                                    "data.files.train"))]

    def check(self) -> None:
        """Fail fast on a config that cannot work, before any data is touched."""
        for key in ("name", "src_lang", "tgt_lang"):
            if getattr(self, key) in (None, "", "???"):
                raise ConfigError(f"data.{key} is not set")
        check_tag(self.src_lang, "data.src_lang")
        check_tag(self.tgt_lang, "data.tgt_lang")
        if self.corpus is None and not self.files:
            raise ConfigError("data: set either corpus (a catalog corpus) or files")
        if self.corpora and self.corpus is not None:
            raise ConfigError("data.corpora: for your own files (data=files), not a catalog "
                              "corpus")
        train = (self.files or {}).get("train")
        if self.corpora and isinstance(train, Mapping) and train.get("src") not in (None, "???"):
            raise ConfigError("data: set data.corpora or data.files.train, not both")
        unknown = set(self.splits if self.corpus is not None else self.files) - set(SPLITS)
        if unknown:
            raise ConfigError(
                f"data: unknown split(s) {sorted(unknown)}; valid splits: {', '.join(SPLITS)}"
            )
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise ConfigError(f"data.workers must be a positive number of processes or null "
                              f"(all cores), got {self.workers!r}")
        if self.clean_config().langid:  # raises on unknown keys or bad values
            check_languages(self.src_lang, self.tgt_lang)


def _checked(sides: Mapping[str, Any], where: str) -> ParallelFiles:
    for side in ("src", "tgt"):
        if sides.get(side) in (None, "", "???"):
            raise ConfigError(f"{where}.{side} is not set")
        if not Path(sides[side]).is_file():
            raise DataError(f"{sides[side]}: file not found ({where}.{side})")
    return ParallelFiles(Path(sides["src"]), Path(sides["tgt"]))


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
    """Everything ``prepare`` produced: tokenizers, encoded splits and their sources.

    ``datasets["train"]`` is the training corpus, or all of them as one MixedDataset;
    ``corpora`` names each corpus's own dataset, ``shares`` its share of an epoch.
    """

    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    joint: bool
    files: dict[str, ParallelFiles]
    datasets: dict[str, ParallelDataset | MixedDataset]
    timings: dict[str, float]
    encoded_sentences: int = 0  # sentences encoded by this call (0 when all was cached)
    corpora: list[tuple[str, ParallelDataset]] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    cooccurrence: dict[str, float] = field(default_factory=dict)  # what counting cost

    def counts(self) -> Counts:
        """The training corpora's co-occurrence counts (nmt/data/cooccurrence.py), summed."""
        total = Counts.empty(self.src_tokenizer.vocab_size, self.tgt_tokenizer.vocab_size)
        for _, ds in self.corpora:
            total = total.add(Counts.load(ds.directory / COUNTS_FILE))
        return total


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(data_cfg: DataConfig | Mapping[str, Any],
            tokenizer_cfg: TokenizerConfig | Mapping[str, Any], seed: int = 1,
            tokenizers: tuple[Tokenizer, Tokenizer] | None = None) -> PreparedData:
    """Fetch, train tokenizers and encode every split, using the cache where it can;
    ``seed`` draws the mix of several training corpora. ``tokenizers`` (source, target;
    one object for a joint vocabulary; a checkpoint's, to fine-tune it) are used instead
    of training any."""
    if not isinstance(data_cfg, DataConfig):
        data_cfg = from_dict(DataConfig, data_cfg, "data")
    if not isinstance(tokenizer_cfg, TokenizerConfig):
        tokenizer_cfg = from_dict(TokenizerConfig, tokenizer_cfg, "tokenizer")
    data_cfg.check()
    with _exclusive(Path(data_cfg.root) / data_cfg.name):
        return _prepare(data_cfg, tokenizer_cfg, seed, tokenizers)


@contextmanager
def _exclusive(base: Path) -> Iterator[None]:
    """One preparation of a data set at a time on a machine (torchrun starts every rank
    at once): the others wait for it, then find everything cached."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".prepare.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(data_cfg: DataConfig, tokenizer_cfg: TokenizerConfig, seed: int,
             tokenizers: tuple[Tokenizer, Tokenizer] | None = None) -> PreparedData:
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    files = data_cfg.resolve()
    if "train" not in files:
        raise ConfigError("data: no training split configured")
    corpora = data_cfg.training_corpora()
    timings["fetch_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    src_tok, tgt_tok = tokenizers or _tokenizers(data_cfg, tokenizer_cfg, corpora)
    timings["tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    workers = data_cfg.workers or all_cores()
    splits = [(f"train:{spec.name}", "train", pf) for spec, pf in corpora]
    splits += [(split, split, pf) for split, pf in files.items() if split != "train"]
    datasets: dict[str, ParallelDataset | MixedDataset] = {}
    encoded = 0
    for name, split, pf in splits:
        clean = data_cfg.clean_config() if split == "train" else None  # dev/test: never
        key = _key(FORMAT_VERSION, pf.fingerprint(), src_tok.digest, tgt_tok.digest,
                   dataclasses.asdict(clean) if clean else None)
        out = Path(data_cfg.root) / data_cfg.name / "encoded" / key / split
        if not (out / "meta.json").is_file():
            log.info("encoding %s of %s", name, data_cfg.name)
            encoded += encode_split(pf, src_tok, tgt_tok, out, clean, workers,
                                    (data_cfg.src_lang, data_cfg.tgt_lang)).sentences
        datasets[name] = dataset = ParallelDataset(out)
        if clean is not None:
            log.info("cleaning %s: %s", name, dataset.clean_report)
    timings["encode_s"] = time.perf_counter() - t0
    joint = tokenizer_cfg.joint if tokenizers is None else src_tok is tgt_tok
    prepared = PreparedData(src_tok, tgt_tok, joint, files, datasets, timings, encoded)
    _training_corpora(prepared, corpora, data_cfg.temperature, seed, workers)
    return prepared


def _tokenizers(data_cfg: DataConfig, cfg: TokenizerConfig,
                corpora: list[tuple[CorpusSpec, ParallelFiles]]) -> tuple[Tokenizer, Tokenizer]:
    """The tokenizers, trained on the training corpus (several: on a sample drawn from
    them by weight; the cache key names the corpora, not the weights, so a new weight
    keeps the tokenizer and the encoded data)."""
    spm_dir = (Path(data_cfg.root) / data_cfg.name / "spm"
               / cfg.key("+".join(pf.fingerprint() for _, pf in corpora)))

    def lines(sides: tuple[int, ...]) -> Iterator[str]:  # read only if a model is trained
        if len(corpora) == 1:
            pf = corpora[0][1]
            yield from (_both_sides(pf) if len(sides) == 2
                        else read_lines((pf.src, pf.tgt)[sides[0]]))
            return
        sizes = [line_count(pf.src) for _, pf in corpora]
        p = shares(sizes, [spec.weight for spec, _ in corpora], data_cfg.temperature)
        yield from weighted_sample([(pf.src, pf.tgt) for _, pf in corpora], p,
                                   cfg.input_sentence_size or sum(sizes), cfg.seed, sides)

    if cfg.joint:
        tok = load_or_train(spm_dir, "joint", lines((0, 1)), cfg)
        return tok, tok
    return (load_or_train(spm_dir, "src", lines((0,)), cfg),
            load_or_train(spm_dir, "tgt", lines((1,)), cfg))


def _training_corpora(prepared: PreparedData, corpora: list[tuple[CorpusSpec, ParallelFiles]],
                      temperature: float | None, seed: int, workers: int) -> None:
    """Count each training corpus's co-occurrences (cached); mix several into one dataset."""
    t0 = time.perf_counter()
    named = []
    for spec, _ in corpora:
        ds = prepared.datasets.pop(f"train:{spec.name}")
        assert isinstance(ds, ParallelDataset)
        named.append((spec.name, ds))
    vocab = (prepared.src_tokenizer.vocab_size, prepared.tgt_tokenizer.vocab_size)
    seconds = peak = 0.0
    for _, ds in named:
        _, cost = count_split(ds.directory, *vocab, workers=workers)
        seconds, peak = seconds + cost["seconds"], max(peak, cost["peak_rss_gb"])
    prepared.cooccurrence = {"seconds": seconds, "peak_rss_gb": peak}
    prepared.timings["cooccurrence_s"] = time.perf_counter() - t0
    prepared.corpora = named
    p = shares([len(ds) for _, ds in named], [spec.weight for spec, _ in corpora], temperature)
    prepared.shares = p.tolist()
    prepared.datasets["train"] = (named[0][1] if len(named) == 1 else
                                  MixedDataset(named, p, seed))
    # The splits in their usual order: train, valid, test.
    prepared.datasets = {k: prepared.datasets[k] for k in SPLITS if k in prepared.datasets}


def _both_sides(files: ParallelFiles) -> Iterator[str]:
    for src, tgt in read_parallel(files.src, files.tgt):
        yield src
        yield tgt
