"""Length-bucketed batches under a token budget; deterministic, rank-aware, resumable.

Each epoch, examples are sorted by (source length, target length) with ties
broken by a permutation drawn from (seed, epoch), packed greedily into batches
whose padded size stays within ``max_tokens``, and the batches are shuffled. So
padding stays low while batch composition and order still change every epoch.

With ``num_replicas`` > 1 (DDP) every rank builds the same batch list, rank r
takes batches r, r + R, r + 2R, ...; the list is first made a multiple of R long
by splitting the largest batches, so every example is used exactly once per
epoch and every rank runs the same number of steps.

With ``epoch_lengths`` the lengths change from epoch to epoch (subword sampling
segments the training sentences anew): each epoch is packed by its own lengths.
With ``epoch_examples`` an epoch is the examples it returns, some possibly repeated,
instead of every example once (several corpora mixed by weight: nmt/data/mixing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler

from nmt.core.errors import ConfigError


def batch_cost(n: int, max_src: int, max_tgt: int) -> int:
    """Padded tokens of a batch: both padded tensors, source and target."""
    return n * (max_src + max_tgt)


class TokenBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices; see the module docstring.

    Lengths are those of the padded tensors' rows (EOS/BOS included).
    ``epoch_lengths(epoch)``, if given, returns an epoch's (source, target) lengths,
    which then replace ``src_lengths`` and ``tgt_lengths``; it is called when that
    epoch's batches are built, and at once by ``set_epoch``.
    """

    def __init__(self, src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int,
                 shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 max_sentences: int | None = None,
                 epoch_lengths: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
                 epoch_examples: Callable[[int], np.ndarray] | None = None) -> None:
        if max_tokens <= 0:
            raise ConfigError(f"max_tokens must be positive, got {max_tokens}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64)
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
        if len(self.src_lengths) != len(self.tgt_lengths):
            raise ValueError("src_lengths and tgt_lengths differ in size")
        if len(self.src_lengths) < num_replicas:
            raise ConfigError(
                f"{len(self.src_lengths)} examples cannot be shared by {num_replicas} processes"
            )
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.epoch_lengths = epoch_lengths
        self.epoch_examples = epoch_examples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start = 0  # batches of this rank already consumed in the current epoch
        self._cache: tuple[int, list[np.ndarray]] | None = None

    # -- the batches ---------------------------------------------------------------------

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All batches of an epoch, across ranks (before the per-rank split)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.epoch_lengths is not None:
            src, tgt = self.epoch_lengths(epoch)
            assert len(src) == len(tgt) == len(self.src_lengths)
            self.src_lengths = np.asarray(src, dtype=np.int64)
            self.tgt_lengths = np.asarray(tgt, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.src_lengths)
        # Sort by (src, tgt) length; a random permutation first breaks ties randomly.
        if self.epoch_examples is not None:  # several corpora, mixed (nmt.data.mixing)
            examples = self.epoch_examples(epoch)
            perm = examples[rng.permutation(len(examples))] if self.shuffle else examples
        else:
            perm = rng.permutation(n) if self.shuffle else np.arange(n)
        order = perm[np.lexsort((self.tgt_lengths[perm], self.src_lengths[perm]))]
        batches = self._pack(order)
        while len(batches) % self.num_replicas:
            batches = self._split_largest(batches)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def _pack(self, order: np.ndarray) -> list[np.ndarray]:
        src, tgt = self.src_lengths[order], self.tgt_lengths[order]
        # Running maxima would need a loop anyway; the loop is over examples, in numpy
        # scalars, and takes well under a second per million examples.
        batches: list[np.ndarray] = []
        begin, max_s, max_t = 0, 0, 0
        limit = self.max_sentences or len(order)
        for i in range(len(order)):
            s, t = int(src[i]), int(tgt[i])
            ms, mt = max(max_s, s), max(max_t, t)
            size = i - begin + 1
            if size > 1 and (batch_cost(size, ms, mt) > self.max_tokens or size > limit):
                batches.append(order[begin:i])
                begin, ms, mt = i, s, t
            max_s, max_t = ms, mt
        if begin < len(order):
            batches.append(order[begin:])
        return batches

    @staticmethod
    def _split_largest(batches: list[np.ndarray]) -> list[np.ndarray]:
        k = max(range(len(batches)), key=lambda j: len(batches[j]))
        big = batches[k]
        if len(big) < 2:
            raise ConfigError("too few examples to give every process a batch")
        half = len(big) // 2
        return [*batches[:k], big[:half], big[half:], *batches[k + 1:]]

    def rank_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        return self.batches(epoch)[self.rank::self.num_replicas]

    # -- Sampler protocol ----------------------------------------------------------------

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start = self.start, 0
        for b in self.rank_batches()[start:]:
            yield b.tolist()

    def __len__(self) -> int:
        # The whole epoch, also when resuming: Lightning counts the batches already done.
        return len(self.rank_batches())

    @property
    def sampler(self) -> TokenBatchSampler:
        """Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` (as on torch's
        BatchSampler), not on the batch sampler itself: point it here."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch; a new epoch starts at batch 0."""
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch
        if self.epoch_lengths is not None:
            # Now, not when iterated: the lengths come with the epoch's encoding of the
            # dataset, which must be in place before the DataLoader copies the dataset
            # into its workers (it does so before it asks for the first batch).
            self.batches(epoch)

    # -- resuming ------------------------------------------------------------------------

    def state_dict(self, consumed: int = 0) -> dict[str, int]:
        """Position to resume from: this epoch, after ``consumed`` batches of this rank."""
        return {"epoch": self.epoch, "start": consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.start = int(state["start"])
        self.seed = int(state.get("seed", self.seed))
