"""Subword regularisation: the training split segmented anew every epoch.

With ``tokenizer.sampling.enabled`` the raw text of the training examples (those
the cleaning kept, in the prepared split's order) is segmented again for every
epoch, each segmentation drawn at random from the unigram model (Kudo, 2018)
instead of the best one. The draws come from numpy generators seeded by
(training seed, epoch, side) and nothing else: a run is reproducible, a resumed
run sees the segmentation of the epoch it resumes in, and every DDP rank
computes the same one. Validation, test and translation keep the deterministic
encoding.

SentencePiece's own sampler (``encode(enable_sampling=True)``) is not used: in
sentencepiece 0.2 its generator is seeded per process (abseil salts the seed),
so the same seed gives other segmentations in another process. ``SubwordSampler``
draws from the same distributions with a generator of ours: the whole lattice by
forward filtering and backward sampling, or SentencePiece's (deterministic) n
best. The lattice is the model's own: its best path is exactly
``Tokenizer.encode`` (tested).
"""

from __future__ import annotations

import array
import logging
import math
import re
import time
from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache
from itertools import accumulate

import numpy as np

from nmt.core.errors import DataError
from nmt.core.tokens import UNK_ID
from nmt.data.corpus import ParallelFiles, read_parallel
from nmt.data.dataset import OffsetItems, ParallelDataset
from nmt.data.tokenizer import SamplingConfig, Tokenizer

log = logging.getLogger(__name__)

SPACE = "\u2581"  # "▁": SentencePiece's word boundary in normalized text
WORD_START = re.compile(f"(?={SPACE})")
UNK_PENALTY = 10.0  # SentencePiece scores an unknown character min_score - 10
# Words whose sampling tables are kept, about 3 KB each (Multi30k en-de has 39k words):
# the frequent words of a larger corpus; the others are computed again when drawn.
WORD_CACHE = 100_000
# Pairs held as text and segmented in Python every epoch: about 70 us a pair (2.1 s an
# epoch for Multi30k's 29k on a 2-core AMD EPYC, 2026-12-07), so 2 M pairs take minutes
# an epoch and about 1 GB; larger corpora are refused at start.
MAX_PAIRS = 2_000_000

# One word's sampling tables: for each end position, the begin positions and ids of the
# pieces ending there, and their cumulative weights as the last piece of a path to there.
Tables = tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]], ...]


class SubwordSampler:
    """Segmentations of a unigram SentencePiece model drawn at random, P ∝ p ** ``alpha``:
    from the whole lattice (``nbest`` -1) or from the ``nbest`` best segmentations.

    Pieces never span a word boundary (models trained with SentencePiece's default
    split_by_whitespace), so the lattice of a sentence is a chain of word lattices
    and its segmentation distribution the product of theirs: each word's tables are
    computed once and cached.
    """

    def __init__(self, tok: Tokenizer, alpha: float, nbest: int) -> None:
        sp = tok.sp
        self.tok, self.alpha, self.nbest = tok, alpha, nbest
        self.scores = np.array([sp.get_score(i) for i in range(sp.get_piece_size())])
        self.pieces = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                       if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
                               or sp.is_byte(i))}
        assert all(SPACE not in p[1:] for p in self.pieces), "a piece spans a word boundary"
        self.prefixes = {p[:k] for p in self.pieces for k in range(1, len(p) + 1)}
        self.max_len = max(map(len, self.pieces))
        self.unk_score = min(float(self.scores[i]) for i in self.pieces.values()) - UNK_PENALTY
        self._tables = lru_cache(maxsize=WORD_CACHE)(self._word_tables)

    def sample(self, text: str, rng: np.random.Generator) -> list[int]:
        """One segmentation of ``text`` (ids, like ``Tokenizer.encode``)."""
        if self.nbest > 1:
            return self._sample_nbest(text, rng)
        normalized = self.tok.sp.normalize(text)
        draws = rng.random(len(normalized)).tolist()  # one per character: enough
        ids: list[int] = []
        for word in self._words(normalized):
            # Backward sampling: the last piece given the end, then the one before it, ...
            tables = self._tables(word)
            pieces, pos = [], len(word)
            while pos > 0:
                begins, word_ids, cumulative = tables[pos - 1]
                k = min(bisect_right(cumulative, draws.pop() * cumulative[-1]),
                        len(word_ids) - 1)
                pieces.append(word_ids[k])
                pos = begins[k]
            _extend(ids, reversed(pieces))
        return ids

    def best(self, text: str) -> list[int]:
        """The most probable segmentation on our lattice: ``Tokenizer.encode``'s."""
        ids: list[int] = []
        for word in self._words(self.tok.sp.normalize(text)):
            ends = self._lattice(word)
            best, back = [0.0] * (len(word) + 1), [(0, 0)] * (len(word) + 1)
            for end in range(1, len(word) + 1):
                begin, piece, score = max(ends[end - 1], key=lambda n: best[n[0]] + n[2])
                best[end], back[end] = best[begin] + score, (begin, piece)
            pieces, pos = [], len(word)
            while pos > 0:
                pos, piece = back[pos]
                pieces.append(piece)
            _extend(ids, reversed(pieces))
        return ids

    @staticmethod
    def _words(normalized: str) -> list[str]:
        """The words of a normalized text, each with the "▁" before it."""
        return [w for w in WORD_START.split(normalized) if w]

    def _lattice(self, word: str) -> list[list[tuple[int, int, float]]]:
        """For each end position e (1-based, at index e - 1): the (begin, id, score) of the
        pieces ending there; a character no piece covers is an unknown piece."""
        ends: list[list[tuple[int, int, float]]] = [[] for _ in word]
        for begin in range(len(word)):
            covered = False
            for end in range(begin + 1, min(len(word), begin + self.max_len) + 1):
                piece = word[begin:end]
                if piece not in self.prefixes:
                    break
                i = self.pieces.get(piece)
                if i is not None:
                    ends[end - 1].append((begin, i, float(self.scores[i])))
                    covered = covered or end == begin + 1
            if not covered:
                ends[begin].append((begin, UNK_ID, self.unk_score))
        return ends

    def _word_tables(self, word: str) -> Tables:
        # Forward filtering: log_z[e] = log of the sum over the paths to e of
        # exp(alpha * their score); a piece (b, e) ends such a path with weight
        # exp(log_z[b] + alpha * score).
        ends = self._lattice(word)
        log_z = [0.0] * (len(word) + 1)
        tables = []
        for end in range(1, len(word) + 1):
            terms = [log_z[b] + self.alpha * s for b, _, s in ends[end - 1]]
            top = max(terms)
            weights = [math.exp(t - top) for t in terms]
            log_z[end] = top + math.log(sum(weights))
            tables.append((tuple(b for b, _, _ in ends[end - 1]),
                           tuple(i for _, i, _ in ends[end - 1]), tuple(accumulate(weights))))
        return tuple(tables)

    def _sample_nbest(self, text: str, rng: np.random.Generator) -> list[int]:
        # SentencePiece's n-best list is deterministic; the draw among them is ours.
        hyps = self.tok.sp.nbest_encode(text, nbest_size=self.nbest, out_type=int)
        draw = rng.random()
        if len(hyps) < 2:
            return list(hyps[0]) if hyps else []
        # Unknown pieces score the same in every hypothesis: the table's score will do.
        scores = np.array([self.scores[h].sum() for h in hyps])
        cumulative = np.cumsum(np.exp(self.alpha * (scores - scores.max())))
        k = int(np.searchsorted(cumulative, draw * cumulative[-1], side="right"))
        return list(hyps[min(k, len(hyps) - 1)])


def _extend(ids: list[int], pieces: Iterable[int]) -> None:
    """Append pieces, merging a run of unknown pieces into one (as SentencePiece does)."""
    for piece in pieces:
        if not (piece == UNK_ID and ids and ids[-1] == UNK_ID):
            ids.append(piece)


def kept_texts(files: ParallelFiles, line_numbers: np.ndarray) -> tuple[list[str], list[str]]:
    """The source and target lines at ``line_numbers`` (1-based, ascending), in order."""
    keep = np.zeros(int(line_numbers.max(initial=0)) + 1, dtype=bool)
    keep[line_numbers] = True
    src: list[str] = []
    tgt: list[str] = []
    for n, (s, t) in enumerate(read_parallel(files.src, files.tgt), start=1):
        if n < len(keep) and keep[n]:
            src.append(s)
            tgt.append(t)
    return src, tgt


class SampledDataset(OffsetItems):
    """The training split, segmented anew for each epoch; item i is (i, src_ids, tgt_ids),
    the same example as item i of ``base`` (the split's deterministic encoding).

    ``row_lengths(epoch)`` segments the examples for ``epoch`` (unless it is the epoch
    already held) and returns their rows' lengths for the batch sampler; items are
    those of the epoch last segmented (before any: the deterministic encoding).
    """

    def __init__(self, base: ParallelDataset, files: ParallelFiles, src_tok: Tokenizer,
                 tgt_tok: Tokenizer, sampling: SamplingConfig, seed: int) -> None:
        assert sampling.enabled
        if len(base) > MAX_PAIRS:
            raise DataError(f"tokenizer.sampling: {len(base):,} training pairs; subword sampling "
                            f"holds the text and segments it in Python every epoch, at most "
                            f"{MAX_PAIRS:,} pairs (minutes an epoch): set "
                            f"tokenizer.sampling.enabled=false")
        self.base = base
        self.sampling = sampling
        self.seed = seed
        src = SubwordSampler(src_tok, sampling.alpha, sampling.nbest)
        self.samplers = (src, src if tgt_tok is src_tok else
                         SubwordSampler(tgt_tok, sampling.alpha, sampling.nbest))
        self.texts = kept_texts(files, base.line_numbers)
        if len(self.texts[0]) != len(base):
            raise DataError(f"{files.src}: changed since it was encoded into "
                            f"{base.directory}; delete that directory to encode it again")
        self.epoch: int | None = None
        self.src_ids, self.src_offsets = base.src_ids, base.src_offsets
        self.tgt_ids, self.tgt_offsets = base.tgt_ids, base.tgt_offsets

    def __len__(self) -> int:
        return len(self.base)

    def __getstate__(self) -> dict[str, object]:
        # DataLoader workers started by "spawn" get a pickled copy: they serve items only.
        return {**self.__dict__, "texts": ([], []), "samplers": None}

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def row_lengths(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Segment for ``epoch``; the (source, target) lengths of the padded tensors' rows
        (EOS/BOS included), as TokenBatchSampler counts them."""
        if epoch != self.epoch:
            self.segment(epoch)
        return self.src_lengths + 1, self.tgt_lengths + 1

    def segment(self, epoch: int) -> None:
        """Draw the segmentation of ``epoch`` and serve it from now on."""
        start = time.perf_counter()
        first = self.epoch is None
        for side, name in enumerate(("src", "tgt")):
            rng = np.random.default_rng([self.seed, epoch, side])
            flat, lengths = array.array("i"), array.array("q")
            for text in self.texts[side]:
                ids = self.samplers[side].sample(text, rng)
                flat.extend(ids)
                lengths.append(len(ids))
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
            setattr(self, f"{name}_ids", np.frombuffer(flat, dtype=np.int32))
            setattr(self, f"{name}_offsets", offsets)
        self.epoch = epoch
        seconds = time.perf_counter() - start
        if first:  # what max_tokens now holds: the ratio helps choose it
            src, tgt = self.piece_ratios()
            log.info("subword sampling (alpha %g, nbest %d): %.2fx the source pieces and "
                     "%.2fx the target pieces of the deterministic encoding; epoch %d "
                     "segmented in %.1f s", self.sampling.alpha, self.sampling.nbest, src, tgt,
                     epoch, seconds)
        else:
            log.debug("subword sampling: epoch %d segmented in %.1f s", epoch, seconds)

    def piece_ratios(self) -> tuple[float, float]:
        """Pieces of the held segmentation / pieces of the deterministic one, per side."""
        return (len(self.src_ids) / max(1, int(self.base.src_lengths.sum())),
                len(self.tgt_ids) / max(1, int(self.base.tgt_lengths.sum())))
