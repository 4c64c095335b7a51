"""The token-budget sampler shared by R processes (DDP ranks, on one node or many).

tests/test_sampler.py checks one large corpus at one epoch for R = 2, 3, 4. Here: R = 1
to 4 over small and awkward corpora (very uneven lengths, a batch count that is not a
multiple of R, a sentence cap, lengths that change every epoch), every epoch of several,
the unshuffled order of the evaluation loaders, a mid-epoch resume on every rank, and
the one corpus shape no split can share evenly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from nmt.core.errors import ConfigError
from nmt.data.sampler import TokenBatchSampler

WORLDS = [1, 2, 3, 4]
Lengths = tuple[np.ndarray, np.ndarray]


def uneven() -> Lengths:
    """23 examples: mostly 1 to 3 tokens, a few of 40 to 250 (each alone in a batch)."""
    rng = np.random.default_rng(3)
    src = rng.integers(1, 4, size=23)
    src[[2, 9, 10, 17]] = [40, 250, 120, 90]
    tgt = np.maximum(1, src + rng.integers(-1, 3, size=23))
    return src, tgt


def short_sentences() -> Lengths:
    """101 sentences, a prime count: most splits of it leave a remainder."""
    rng = np.random.default_rng(4)
    return rng.integers(2, 12, size=101), rng.integers(2, 12, size=101)


def long_tail() -> Lengths:
    """700 corpus-like lengths with a long tail."""
    rng = np.random.default_rng(5)
    src = np.minimum(200, rng.geometric(0.08, size=700) + 1)
    return src, np.maximum(1, (src * rng.uniform(0.6, 1.6, size=700)).astype(int))


CORPORA: dict[str, tuple[Callable[[], Lengths], int]] = {  # lengths, max_tokens
    "uneven": (uneven, 40),
    "short": (short_sentences, 90),
    "long_tail": (long_tail, 800),
}


def replicas(lengths: Lengths, max_tokens: int, world: int, **kwargs) -> list[TokenBatchSampler]:
    return [TokenBatchSampler(*lengths, max_tokens=max_tokens, num_replicas=world, rank=r,
                              **kwargs) for r in range(world)]


def check_epoch(samplers: list[TokenBatchSampler], epoch: int, n: int) -> list[list[list[int]]]:
    """One epoch on every rank: equal step counts (as announced by len) and every example
    exactly once across the ranks; returns each rank's batches."""
    for s in samplers:
        s.set_epoch(epoch)
    shares = [list(s) for s in samplers]
    steps = [len(share) for share in shares]
    assert steps == [len(s) for s in samplers], "len() differs from the batches yielded"
    assert len(set(steps)) == 1 and steps[0] > 0, f"unequal steps per rank: {steps}"
    assert all(batch for share in shares for batch in share), "an empty batch"
    counts = Counter(i for share in shares for batch in share for i in batch)
    assert sorted(counts) == list(range(n)), "an example is missing"
    assert set(counts.values()) == {1}, "an example is used twice"
    return shares


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("corpus", list(CORPORA))
@pytest.mark.parametrize("shuffle", [True, False])  # False: the validation and test loaders
def test_every_rank_equal_steps_and_every_example_once(corpus, world, shuffle):
    make, max_tokens = CORPORA[corpus]
    lengths = make()
    samplers = replicas(lengths, max_tokens, world, shuffle=shuffle, seed=11)
    for epoch in range(4):
        check_epoch(samplers, epoch, len(lengths[0]))


def test_the_corpora_need_splitting():
    """The cases above are the awkward ones: packed for one process, their batch counts
    are no multiple of 2, 3 or 4 (so the sampler has to split batches), and the uneven
    corpus has examples that fill a batch on their own."""
    for corpus in ("uneven", "short"):
        make, max_tokens = CORPORA[corpus]
        counts = {len(TokenBatchSampler(*make(), max_tokens=max_tokens, seed=11).batches(e))
                  for e in range(4)}
        assert all(c % w for c in counts for w in (2, 3, 4)), (corpus, counts)
    batches = TokenBatchSampler(*uneven(), max_tokens=40, seed=11).batches()
    assert sum(len(b) == 1 for b in batches) >= 4


@pytest.mark.parametrize("world", WORLDS)
def test_ranks_with_a_sentence_cap(world):
    lengths = short_sentences()
    samplers = replicas(lengths, 10_000, world, seed=2, max_sentences=7)
    for epoch in range(3):
        shares = check_epoch(samplers, epoch, 101)
        assert max(len(b) for share in shares for b in share) <= 7


@pytest.mark.parametrize("world", WORLDS)
def test_ranks_with_lengths_that_change_every_epoch(world):
    """Subword sampling: every rank asks for the epoch's lengths itself, and all ranks
    get the same ones, so they pack the same batch list."""
    src, tgt = uneven()

    def epoch_lengths(epoch: int) -> Lengths:
        rng = np.random.default_rng([7, epoch])
        return src + rng.integers(0, 3, size=src.size), tgt + rng.integers(0, 3, size=src.size)

    samplers = replicas((src, tgt), 40, world, seed=4, epoch_lengths=epoch_lengths)
    for epoch in range(4):
        check_epoch(samplers, epoch, src.size)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_resumed_mid_epoch_finish_it_together(world):
    """Lightning saves one position (rank 0's batches done); every rank resumes there."""
    make, max_tokens = CORPORA["short"]
    lengths = make()
    full = replicas(lengths, max_tokens, world, seed=3)
    shares = check_epoch(full, 1, 101)
    done = 2
    state = full[0].state_dict(consumed=done)
    resumed = replicas(lengths, max_tokens, world, seed=0)
    for s in resumed:
        s.load_state_dict(state)
    rest = [list(s) for s in resumed]
    assert [len(s) for s in resumed] == [len(share) for share in shares]  # whole epoch
    assert rest == [share[done:] for share in shares]
    assert len({len(r) for r in rest}) == 1


def test_a_corpus_no_split_can_share_evenly_is_a_config_error():
    """3 examples, each over the budget: 3 batches of one that cannot be split, so 2
    processes cannot get equal steps without repeating or merging one. The sampler is
    built (3 examples >= 2 processes) and fails when the batches are made."""
    lengths = (np.array([10, 12, 14]), np.array([10, 12, 14]))
    sampler = TokenBatchSampler(*lengths, max_tokens=5, num_replicas=2, rank=0)
    with pytest.raises(ConfigError, match="too few examples to give every process a batch"):
        len(sampler)
    check_epoch(replicas(lengths, 5, 3), 0, 3)  # 3 processes: one batch each


def test_random_small_corpora():
    """Many small corpora: the ranks share each epoch evenly, or, only when every batch
    would have to be a single example and still be too few (k batches packed for one
    process, n examples, R processes: R * ceil(k / R) > n), it is a ConfigError."""
    rng = np.random.default_rng(0)
    shared = refused = 0
    for trial in range(150):
        n = int(rng.integers(1, 30))
        long = rng.random(n) < 0.4
        src = np.where(long, rng.integers(30, 300, n), rng.integers(1, 5, n))
        tgt = np.maximum(1, src + rng.integers(-2, 3, n))
        max_tokens = int(rng.choice([8, 40, 200]))
        cap = [None, None, 2, 1][trial % 4]
        k = len(TokenBatchSampler(src, tgt, max_tokens, seed=trial, max_sentences=cap).batches())
        for world in [w for w in WORLDS if w <= n]:
            samplers = replicas((src, tgt), max_tokens, world, seed=trial, max_sentences=cap)
            if world * math.ceil(k / world) > n:
                with pytest.raises(ConfigError):
                    samplers[0].batches()
                refused += 1
                continue
            for epoch in range(2):
                check_epoch(samplers, epoch, n)
            shared += 1
    assert shared > 100 and refused > 10  # both kinds of corpora were drawn
