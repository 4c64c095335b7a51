"""How often source and target pieces occur in the same sentence pair: the counts the
lexical shortlist's table is made of (nmt/decoding/shortlist.py).

Counted during preparation over at most ``SAMPLE`` (250,000) pairs of the encoded training
split, evenly spaced (all of them up to that size), and cached beside it as
``cooccurrence.npz``. Memory is bounded at any corpus size: the pairs are counted a
chunk of at most ``CHUNK`` (source piece, target piece) pairs at a time, spread over
``workers`` processes, and merged into one sorted array of distinct codes
``s * tgt_vocab + t`` as they come.
"""

from __future__ import annotations

import itertools
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.data.store import SplitArrays
from nmt.data.workers import worker_pool

SAMPLE = 250_000  # sentence pairs counted at most: tens of millions of piece pairs
CHUNK = 2_000_000  # (source piece, target piece) pairs counted at a time: about 150 MB
NONE = np.empty(0, dtype=np.int64)  # lets an empty chunk concatenate
FILE = "cooccurrence.npz"


@dataclass
class Counts:
    """Sentence pairs per (source piece, target piece) code, and per piece of each side."""

    codes: np.ndarray  # sorted distinct codes s * tgt_vocab + t (int64)
    pairs: np.ndarray  # sentence pairs with both pieces, per code (int64)
    src: np.ndarray  # sentence pairs with the source piece, per source id
    tgt: np.ndarray  # sentence pairs with the target piece, per target id
    sentences: int  # sentence pairs counted

    @classmethod
    def empty(cls, src_vocab: int, tgt_vocab: int) -> Counts:
        return cls(NONE, NONE, np.zeros(src_vocab, dtype=np.int64),
                   np.zeros(tgt_vocab, dtype=np.int64), 0)

    def add(self, other: Counts) -> Counts:
        codes, pairs = merge(self.codes, self.pairs, other.codes, other.pairs)
        return Counts(codes, pairs, self.src + other.src, self.tgt + other.tgt,
                      self.sentences + other.sentences)

    def save(self, path: Path) -> None:
        """Written atomically: a temporary file renamed."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, codes=self.codes, pairs=self.pairs, src=self.src, tgt=self.tgt,
                 sentences=np.int64(self.sentences))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Counts:
        with np.load(path) as z:
            return cls(z["codes"], z["pairs"], z["src"], z["tgt"], int(z["sentences"]))


def count(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray],
          src_vocab: int, tgt_vocab: int, rows: np.ndarray | None = None) -> Counts:
    """The counts of the sentence pairs ``rows`` (ascending; all when None) of a corpus:
    ``src`` and ``tgt`` are (ids, offsets) of its encoded sentences (sentence i:
    ids[offsets[i]:offsets[i + 1]], without BOS and EOS)."""
    if rows is None:
        rows = np.arange(len(src[1]) - 1)
    total = Counts.empty(src_vocab, tgt_vocab)
    for part in _chunks(rows, np.asarray(src[1]), np.asarray(tgt[1])):
        s_ids, s_n = _distinct(*src, part, src_vocab)
        t_ids, t_n = _distinct(*tgt, part, tgt_vocab)
        codes, pairs = _unique(_pair_codes(s_ids, s_n, t_ids, t_n, tgt_vocab), counts=True)
        total = total.add(Counts(codes, pairs, np.bincount(s_ids, minlength=src_vocab),
                                 np.bincount(t_ids, minlength=tgt_vocab), len(part)))
    return total


def sample_rows(n: int, sample: int = SAMPLE) -> np.ndarray:
    """At most ``sample`` of ``n`` rows, evenly spaced (all of them when n <= sample)."""
    if n <= sample:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, sample).astype(np.int64))


def _chunks(rows: np.ndarray, src_offsets: np.ndarray, tgt_offsets: np.ndarray
            ) -> list[np.ndarray]:
    """``rows`` in runs of at most CHUNK piece pairs each (a longer pair alone)."""
    products = (np.diff(src_offsets)[rows] * np.diff(tgt_offsets)[rows]).astype(np.int64)
    total = np.cumsum(products)
    ends = np.searchsorted(total, np.arange(CHUNK, int(total[-1]) if len(total) else 0,
                                            CHUNK), side="right")
    bounds = np.unique(np.concatenate([[0], np.maximum(ends, 1), [len(rows)]]))
    return [rows[a:b] for a, b in itertools.pairwise(bounds.tolist())]


def _distinct(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray, vocab: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ids of each of the sentences ``rows`` (ascending), sorted and laid end
    to end, and how many each sentence has. Only the span of ``ids`` from the first to
    the last of them is read."""
    if not len(rows):
        return NONE, NONE
    begins = np.asarray(offsets[rows], dtype=np.int64)
    lengths = np.asarray(offsets[rows + 1], dtype=np.int64) - begins
    first = int(begins[0])
    span = np.asarray(ids[first:int(begins[-1] + lengths[-1])], dtype=np.int64)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    sentence = np.repeat(np.arange(len(rows)), lengths)
    keys, _ = _unique(sentence * vocab + span[np.repeat(begins - first, lengths) + within])
    return keys % vocab, np.bincount(keys // vocab, minlength=len(rows))


def _pair_codes(s_ids: np.ndarray, s_n: np.ndarray, t_ids: np.ndarray, t_n: np.ndarray,
                tgt_vocab: int) -> np.ndarray:
    """Every (source piece, target piece) pair of each sentence pair, as one code
    ``s * tgt_vocab + t``: sentence j pairs its s_n[j] source with its t_n[j] target ids."""
    # One block per source id: the target ids of its sentence.
    block = np.repeat(t_n, s_n)  # each source id's block length
    s_flat = np.repeat(s_ids, block)
    starts = np.repeat(np.cumsum(t_n) - t_n, s_n)  # where its sentence's target ids begin
    shift = np.repeat(starts - (np.cumsum(block) - block), block)
    return s_flat * tgt_vocab + t_ids[shift + np.arange(len(s_flat))]


def _unique(x: np.ndarray, counts: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique`` by sorting (numpy's hash-based path is slower on wide int64 codes)."""
    x = np.sort(x)
    first = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1]))) if len(x) else NONE
    n = np.diff(np.append(first, len(x))) if counts else NONE
    return x[first], n


def merge(codes: np.ndarray, counts: np.ndarray, more: np.ndarray, more_counts: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted, distinct code arrays with counts, merged (in linear time): the codes
    of both, sorted and distinct, with their counts added."""
    at = np.searchsorted(codes, more)
    seen = at < len(codes)
    seen[seen] = codes[at[seen]] == more[seen]
    counts = counts.astype(np.int64)  # a copy
    counts[at[seen]] += more_counts[seen]
    new = ~seen
    return np.insert(codes, at[new], more[new]), np.insert(counts, at[new], more_counts[new])


# --- a split's counts, in workers ------------------------------------------------------------


def _count_part(args: tuple[str, int, int, np.ndarray]) -> tuple[Counts, float]:
    """A worker's counts of some rows, and its peak resident memory (GB)."""
    directory, src_vocab, tgt_vocab, rows = args
    ds = SplitArrays(directory)
    counts = count((ds.src_ids, ds.src_offsets), (ds.tgt_ids, ds.tgt_offsets), src_vocab,
                   tgt_vocab, rows)
    return counts, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def count_split(directory: Path, src_vocab: int, tgt_vocab: int, workers: int = 1,
                sample: int = SAMPLE) -> tuple[Counts, dict[str, float]]:
    """The counts of an encoded split (cached in it: counted the first time, in up to
    ``workers`` processes, one per 100,000 pairs), and what counting cost: seconds and
    peak memory (of the workers; of this process when counted here; 0 when cached)."""
    path = directory / FILE
    if path.is_file():
        return Counts.load(path), {"seconds": 0.0, "peak_rss_gb": 0.0}
    start = time.perf_counter()
    n = len(np.load(directory / "src.offsets.npy", mmap_mode="r")) - 1
    rows = sample_rows(n, sample)
    parts = [(str(directory), src_vocab, tgt_vocab, part)
             for part in np.array_split(rows, max(1, min(workers, len(rows) // 100_000)))]
    counts, peak = Counts.empty(src_vocab, tgt_vocab), 0.0
    if len(parts) == 1:  # a small split (starting a process costs seconds): counted here
        counts, peak = _count_part(parts[0])
    else:
        with worker_pool(len(parts)) as pool:
            for part, rss in pool.imap(_count_part, parts):
                counts, peak = counts.add(part), max(peak, rss)
    counts.save(path)
    return counts, {"seconds": time.perf_counter() - start, "peak_rss_gb": peak}
