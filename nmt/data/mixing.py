"""Several training corpora, mixed by weight when the batches are built.

``data.corpora`` lists corpora, each ``{src, tgt, weight, name}``, in place of
``data.files.train``. Each is
encoded into a cache of its own (nmt/data/prepare.py): changing a weight re-encodes
nothing. An epoch has as many examples as all corpora together keep, N; corpus c
gives round(p_c N) of them, where

    p_c ~ weight_c                when weights are given,
    p_c ~ n_c ** (1 / T)          with data.temperature T (T = 1: by size; larger T
                                  flattens towards equal shares, as in fairseq),
    p_c ~ n_c                     otherwise (every kept pair once an epoch).

A corpus drawn more than its size repeats, one drawn less gives a different part
of itself each epoch: its examples come from an endless run of permutations of
its pairs, seeded by (seed, corpus, round), epoch e taking the next round(p_c N).
Every rank computes the same draw. The realized shares are logged each epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.core.errors import ConfigError
from nmt.data.corpus import open_binary, read_parallel
from nmt.data.dataset import OffsetItems, ParallelDataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSpec:
    """One training corpus of ``data.files.train``: its files, name and weight."""

    name: str
    src: str
    tgt: str
    weight: float | None = None

    @classmethod
    def parse(cls, entries: object, key: str = "data.corpora") -> list[CorpusSpec]:
        """The corpora of config key ``key``: one ``{src, tgt}`` or a list of them."""
        items = entries if isinstance(entries, list | tuple) else [entries]
        specs = []
        for k, item in enumerate(items):
            where = key + (f"[{k}]" if isinstance(entries, list | tuple) else "")
            if not isinstance(item, dict):
                raise ConfigError(f"{where}: expected {{src: ..., tgt: ...}}, got {item!r}")
            unknown = sorted(set(item) - {"src", "tgt", "weight", "name"})
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: src, tgt, "
                                  "weight, name")
            for side in ("src", "tgt"):
                if item.get(side) in (None, "", "???"):
                    raise ConfigError(f"{where}.{side} is not set")
            weight = item.get("weight")
            if weight is not None and (isinstance(weight, bool) or not float(weight) > 0):
                raise ConfigError(f"{where}.weight must be a positive number, got {weight!r}")
            specs.append(cls(str(item.get("name") or f"corpus{k}"), str(item["src"]),
                             str(item["tgt"]), None if weight is None else float(weight)))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}: corpus names repeat: {names}")
        given = sum(s.weight is not None for s in specs)
        if 0 < given < len(specs):
            raise ConfigError(f"{key}: give every corpus a weight, or none")
        return specs


def shares(sizes: list[int], weights: list[float | None], temperature: float | None
           ) -> np.ndarray:
    """Each corpus's share of an epoch (see the module docstring)."""
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"data.temperature must be positive, got {temperature}")
    if temperature is not None and any(w is not None for w in weights):
        raise ConfigError("data.temperature and per-corpus weights both set: choose one")
    n = np.asarray(sizes, dtype=np.float64)
    if not n.sum():
        raise ConfigError("data.corpora: the corpora keep no training pair")
    if any(w is not None for w in weights):
        p = np.array(weights, dtype=np.float64)
    elif temperature is not None:
        p = (n / n.sum()) ** (1.0 / temperature)
    else:
        p = n
    p = np.where(n > 0, p, 0.0)
    return p / p.sum()


def counts(total: int, p: np.ndarray) -> np.ndarray:
    """``total`` split by shares ``p`` into integers that add up to it (largest remainders)."""
    exact = p * total
    whole = np.floor(exact).astype(np.int64)
    rest = total - int(whole.sum())
    whole[np.argsort(-(exact - whole), kind="stable")[:rest]] += 1
    return whole


class MixedDataset(OffsetItems):
    """Several encoded corpora as one dataset: example ``offset[c] + i`` is corpus c's i;
    ``epoch_examples(epoch)`` draws an epoch's examples by the corpora's shares."""

    def __init__(self, corpora: list[tuple[str, ParallelDataset]], p: np.ndarray,
                 seed: int) -> None:
        self.names = [name for name, _ in corpora]
        self.parts = [ds for _, ds in corpora]
        self.sizes = np.array([len(ds) for ds in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.p, self.seed = p, seed
        self.per_epoch = counts(int(self.sizes.sum()), p)
        self.src_lengths = np.concatenate([ds.src_lengths for ds in self.parts])
        self.tgt_lengths = np.concatenate([ds.tgt_lengths for ds in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        _, src, tgt = self.parts[c][i - int(self.starts[c])]
        return i, src, tgt

    def epoch_examples(self, epoch: int) -> np.ndarray:
        """The examples of ``epoch`` (indices into this dataset, some repeated)."""
        picked = [self.starts[c] + _stream(int(n), int(m) * epoch, int(m), [self.seed, c])
                  for c, (n, m) in enumerate(zip(self.sizes, self.per_epoch, strict=True))]
        examples = np.concatenate(picked).astype(np.int64)
        tokens = [int(self.src_lengths[e].sum() + self.tgt_lengths[e].sum()) for e in picked]
        log.info("epoch %d mix: %s", epoch, ", ".join(
            f"{name} {len(e) / len(examples):.1%} of pairs, {t / max(1, sum(tokens)):.1%} of "
            f"tokens ({len(e) / max(1, n):.2f}x its {n} pairs)"
            for name, e, t, n in zip(self.names, picked, tokens, self.sizes.tolist(),
                                     strict=True)))
        return examples

    def realized(self, examples: np.ndarray) -> np.ndarray:
        """Each corpus's share of ``examples``."""
        per = np.bincount(np.searchsorted(self.starts, examples, side="right") - 1,
                          minlength=len(self.parts))
        return per / max(1, len(examples))


def _stream(n: int, start: int, length: int, seed: list[int]) -> np.ndarray:
    """Positions start .. start + length of an endless run of permutations of range(n),
    round r drawn from seed + [r]."""
    if n == 0 or length == 0:
        return np.empty(0, dtype=np.int64)
    first, last = start // n, (start + length - 1) // n
    run = np.concatenate([np.random.default_rng([*seed, r]).permutation(n)
                          for r in range(first, last + 1)])
    return run[start - first * n:start - first * n + length]


def weighted_sample(files: list[tuple[Path, Path]], p: np.ndarray, size: int, seed: int,
                    sides: tuple[int, ...] = (0, 1)) -> Iterator[str]:
    """About ``size`` pairs' lines of the corpora (``sides``: 0 source, 1 target), corpus
    c giving a share ``p[c]`` of them: each of its lines taken a whole number of times
    plus one more with the probability of the remainder (drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    for (src, tgt), share in zip(files, p.tolist(), strict=True):
        rate = share * size / max(1, line_count(src))
        for pair in read_parallel(src, tgt):
            times = int(rate) + int(rng.random() < rate - int(rate))
            for _ in range(times):
                for side in sides:
                    yield pair[side]


def line_count(path: Path) -> int:
    """Lines of a text file (plain or gzip), counted in blocks of bytes."""
    with open_binary(path) as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
