"""Properties of the token-budget batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from nmt.core.errors import ConfigError
from nmt.data.sampler import TokenBatchSampler, batch_cost
from nmt.data.summary import padding_ratio


@pytest.fixture(scope="module")
def lengths() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    src = rng.integers(2, 60, size=3001)
    tgt = np.maximum(1, (src * rng.uniform(0.7, 1.4, size=src.size)).astype(int))
    return src, tgt


def flat(batches) -> list[int]:
    return [i for b in batches for i in list(b)]


def test_each_example_once_per_epoch(lengths):
    sampler = TokenBatchSampler(*lengths, max_tokens=2000, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert sorted(flat(sampler)) == list(range(3001))


def test_budget_respected(lengths):
    src, tgt = lengths
    sampler = TokenBatchSampler(src, tgt, max_tokens=1500)
    for b in sampler.batches():
        cost = batch_cost(len(b), int(src[b].max()), int(tgt[b].max()))
        assert cost <= 1500 or len(b) == 1


def test_single_example_over_budget_gets_its_own_batch():
    sampler = TokenBatchSampler(np.array([5, 500, 6]), np.array([5, 400, 6]), max_tokens=100)
    assert sorted(map(list, sampler.batches()), key=len) == [[1], [0, 2]] or sorted(
        map(sorted, sampler.batches())) == [[0, 2], [1]]


def test_max_sentences(lengths):
    sampler = TokenBatchSampler(*lengths, max_tokens=100_000, max_sentences=64)
    assert max(len(b) for b in sampler.batches()) <= 64


def test_deterministic_given_seed_and_epoch(lengths):
    a = TokenBatchSampler(*lengths, max_tokens=2000, seed=7)
    b = TokenBatchSampler(*lengths, max_tokens=2000, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)  # a new epoch gives new batches
    c = TokenBatchSampler(*lengths, max_tokens=2000, seed=8)
    c.set_epoch(3)
    assert list(a) != list(c)


def test_unshuffled_is_sorted_by_length(lengths):
    src, _ = lengths
    sampler = TokenBatchSampler(*lengths, max_tokens=2000, shuffle=False)
    order = flat(sampler)
    assert np.all(np.diff(src[order]) >= 0)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_are_disjoint_equal_and_complete(lengths, world):
    samplers = [TokenBatchSampler(*lengths, max_tokens=2000, seed=5, num_replicas=world, rank=r)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    shares = [list(s) for s in samplers]
    assert len({len(share) for share in shares}) == 1  # same number of steps everywhere
    ids = [set(flat(share)) for share in shares]
    for i in range(world):
        for j in range(i + 1, world):
            assert not ids[i] & ids[j]
    assert sorted(flat(b for share in shares for b in share)) == list(range(3001))


def test_ranks_with_tiny_data():
    samplers = [TokenBatchSampler(np.array([3, 4, 5]), np.array([3, 4, 5]), max_tokens=1000,
                                  num_replicas=3, rank=r) for r in range(3)]
    assert sorted(flat(b for s in samplers for b in s)) == [0, 1, 2]
    assert all(len(s) == 1 for s in samplers)


def test_resume_mid_epoch(lengths):
    full = TokenBatchSampler(*lengths, max_tokens=2000, seed=9)
    full.set_epoch(1)
    expected = list(full)
    run = TokenBatchSampler(*lengths, max_tokens=2000, seed=9)
    run.set_epoch(1)
    state = run.state_dict(consumed=10)
    resumed = TokenBatchSampler(*lengths, max_tokens=2000, seed=0)
    resumed.load_state_dict(state)
    assert len(resumed) == len(expected)  # the epoch's length, as Lightning counts it
    assert list(resumed) == expected[10:]
    assert list(resumed) == expected  # the next pass is a whole epoch again


def test_padding_is_low():
    # Corpus-like lengths: many sentences per length, target length close to source length.
    rng = np.random.default_rng(0)
    src = rng.integers(2, 40, size=30000)
    tgt = np.maximum(1, (src * rng.uniform(0.8, 1.25, size=src.size)).astype(int))
    sampler = TokenBatchSampler(src, tgt, max_tokens=4000)
    assert padding_ratio(sampler) < 0.05
    unsorted = sum(len(b) * (src[b].max() + tgt[b].max()) for b in np.array_split(
        rng.permutation(src.size), len(sampler)))
    assert padding_ratio(sampler) < 0.2 * (1 - (src.sum() + tgt.sum()) / unsorted)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_tokens": 0}, "max_tokens must be positive"),
    ({"num_replicas": 2, "rank": 2}, r"rank 2 is outside 0\.\.1"),
    ({"num_replicas": 5}, "4 examples cannot be shared by 5 processes"),
])
def test_sampler_errors(kwargs, match):
    args = {"max_tokens": 100, **kwargs}
    with pytest.raises(ConfigError, match=match):
        TokenBatchSampler(np.ones(4, int), np.ones(4, int), **args)


def test_lengths_that_change_every_epoch(lengths):
    """epoch_lengths (subword sampling): each epoch packed by its own lengths, asked for
    when set_epoch is called (before a DataLoader starts its workers)."""
    src, tgt = lengths
    asked = []

    def epoch_lengths(epoch: int) -> tuple[np.ndarray, np.ndarray]:
        asked.append(epoch)
        return src + epoch, tgt + 2 * epoch

    sampler = TokenBatchSampler(src, tgt, max_tokens=2000, epoch_lengths=epoch_lengths)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        assert asked[-1] == epoch
        for b in sampler:
            cost = batch_cost(len(b), int(src[b].max()) + epoch, int(tgt[b].max()) + 2 * epoch)
            assert cost <= 2000 or len(b) == 1
    assert asked == [0, 1, 5]  # once per epoch
