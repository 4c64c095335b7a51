"""Decoding options (checked once, in ``Decoding``), the ``max_len`` cap and ``decode``."""

from __future__ import annotations

import math

import pytest
import torch
from test_search import HAND, PlainModel, TableModel, TinyModel, table_batch

from nmt.core.errors import ConfigError
from nmt.data.dataset import Batch
from nmt.decoding.beam import beam_search
from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.options import Decoding
from nmt.decoding.search import greedy_search, max_lengths, sample

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the options -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"beam_size": 0}, "beam_size must be >= 1, got 0"),
    ({"beam_size": 2, "n_best": 3}, r"n_best must be between 1 and beam_size \(2\), got 3"),
    ({"n_best": 0}, r"n_best must be between 1 and beam_size \(5\), got 0"),
    ({"min_len": -1}, "min_len must be >= 0, got -1"),
    ({"max_len_a": -0.5}, r"max_len_a and max_len_b must be >= 0 and not both 0 \(the limit "
                          r"counts the EOS\), got -0.5 and 10"),
    ({"max_len_b": -1}, r"max_len_a and max_len_b must be >= 0 .*got 1\.5 and -1"),
    ({"max_len_a": 0, "max_len_b": 0}, "max_len_a and max_len_b .* not both 0 .*got 0 and 0"),
    ({"max_len": 0}, r"max_len must be >= 1 \(it counts the EOS\) or None \(no cap\), got 0"),
    ({"max_len": -3}, r"max_len must be >= 1 \(.*got -3"),
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ({"temperature": -1}, "temperature must be > 0, got -1"),
    ({"top_k": -1}, r"top_k must be >= 0 \(0: the full distribution\), got -1"),
    ({"beam_size": "5"}, "beam_size must be a number, got '5'"),
    ({"beam_size": True}, "beam_size must be a number, got True"),
    ({"n_best": 1.0}, "n_best must be an integer, got 1.0"),
    ({"max_len": 2.5}, "max_len must be an integer, got 2.5"),
    ({"seed": None}, "seed must be a number, got None"),
    ({"alpha": float("nan")}, "alpha must be finite, got nan"),
    ({"max_len_a": float("inf")}, "max_len_a must be finite, got inf"),
    ({"sampling": "yes"}, "sampling must be true or false, got 'yes'"),
    ({"max_len": 10**23}, r"max_len is out of range \(at most 2147483647 in size\), "
                          rf"got {10**23}"),
    ({"beam_size": -(2**31)}, r"beam_size is out of range \(at most 2147483647 in size\), "
                              r"got -2147483648"),
    ({"max_len_a": 1e300}, r"max_len_a is out of range \(.*\), got 1e\+300"),
    ({"seed": 2**64}, r"seed is out of range \(at most 9223372036854775807 in size\), "
                      rf"got {2**64}"),
])
def test_every_bad_option_is_named(kwargs, message):
    with pytest.raises(ConfigError, match=f"^decoding: {message}$"):
        Decoding(**kwargs)
    with pytest.raises(ConfigError, match=message):  # config files go through from_dict
        Decoding.from_dict(kwargs)


def test_all_problems_at_once_and_types_first():
    with pytest.raises(ConfigError, match=r"^decoding: beam_size must be >= 1, got 0; min_len "
                                          r"must be >= 0, got -1$"):
        Decoding(beam_size=0, min_len=-1)  # no word on n_best, whose bound is beam_size
    # A wrong type is reported alone: comparing it would make no sense.
    with pytest.raises(ConfigError, match=r"^decoding: top_k must be a number, got 'x'$"):
        Decoding(top_k="x", min_len=-1)


def test_good_options():
    assert Decoding().max_len is None
    Decoding(max_len=1, max_len_a=0, max_len_b=1, alpha=0, temperature=2, beam_size=1)
    Decoding(sampling=True, n_best=9)  # n_best is unused when sampling
    Decoding(max_len_a=2, alpha=1, seed=-5)  # ints where floats are expected


def test_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['beam'\]; valid keys: beam_size"):
        Decoding.from_dict({"beam": 3})


# -- the max_len cap ---------------------------------------------------------------------------


def test_max_lengths_cap():
    lengths = torch.tensor([1, 7, 10])
    assert max_lengths(lengths, 1.5, 10, max_len=20).tolist() == [11, 20, 20]
    assert max_lengths(lengths, 1.5, 10, max_len=None).tolist() == [11, 20, 25]
    assert max_lengths(lengths, 0.0, 0.5, max_len=1).tolist() == [1, 1, 1]


def test_max_len_caps_the_hand_table():
    # The a * len + b limit is 14 here; max_len=3 makes it 3 tokens, EOS included, and
    # beats min_len=5, exactly as max_len_a=0, max_len_b=3 does in test_search.
    src, lengths = table_batch([0], [3])
    capped = Decoding(min_len=5, max_len=3)
    [[hyp]] = greedy_search(TableModel(HAND), src, lengths, capped)
    assert (hyp.tokens, hyp.score) == ([4, 4], pytest.approx(math.log(0.5 * 0.3 * 0.6)))
    [[hyp]] = beam_search(TableModel(HAND), src, lengths, Decoding(beam_size=2, alpha=0.0,
                                                                   min_len=5, max_len=3))
    assert (hyp.tokens, hyp.score) == ([4, 4], pytest.approx(math.log(0.5 * 0.3 * 0.6)))


@pytest.fixture(scope="module")
def tiny():
    return TinyModel().eval()


@pytest.fixture(scope="module")
def sources():
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([9, 3, 6, 1, 7])
    src = torch.randint(4, 24, (5, 9), generator=g)
    src[torch.arange(9) >= lengths.unsqueeze(1)] = 0
    src[torch.arange(5), lengths - 1] = 2
    return src, lengths


def run(tiny, src, lengths, **options):
    d = Decoding(**options)
    return decode(tiny, SourceBatch(src, lengths), d, return_attention=True,
                  generator=torch.Generator().manual_seed(3))


def same(a, b) -> bool:
    """Bit-identical hypotheses: tokens, scores and attention."""
    return all(
        [(h.tokens, h.score) for h in x] == [(h.tokens, h.score) for h in y]
        and all(torch.equal(h.attention, g.attention) for h, g in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)) and len(a) == len(b)


@pytest.mark.parametrize("options", [{"beam_size": 1}, {"beam_size": 4, "n_best": 2},
                                     {"sampling": True, "top_k": 5}])
def test_max_len_is_min_of_both_limits(tiny, sources, options):
    src, lengths = sources
    # Every a * len + b limit (at least 11) is above 7: the cap alone decides, as a fixed
    # limit of 7 would.
    capped = run(tiny, src, lengths, max_len=7, **options)
    fixed = run(tiny, src, lengths, max_len_a=0, max_len_b=7, **options)
    assert same(capped, fixed)
    assert max(len(h.tokens) for hs in capped for h in hs) == 6  # the cap is reached
    # A cap above every limit, or none, changes nothing.
    assert same(run(tiny, src, lengths, max_len=26, **options), run(tiny, src, lengths, **options))
    # Below some limits only: per sentence the smaller one (1.0 * len + 1 against 5).
    mixed = run(tiny, src, lengths, max_len_a=1.0, max_len_b=1, max_len=5, **options)
    for hyps, n in zip(mixed, lengths.tolist(), strict=True):
        assert all(len(h.tokens) <= min(n + 1, 5) - 1 for h in hyps)


# -- decode ------------------------------------------------------------------------------------


def test_decode_runs_the_search_asked_for(tiny, sources):
    src, lengths = sources
    batch = SourceBatch(src, lengths)
    assert same(decode(tiny, batch, Decoding(beam_size=1), return_attention=True),
                greedy_search(tiny, src, lengths, Decoding(), return_attention=True))
    beam = Decoding(beam_size=3, n_best=3)
    assert same(decode(tiny, batch, beam, return_attention=True),
                beam_search(tiny, src, lengths, beam, return_attention=True))
    assert len(decode(tiny, batch, Decoding(beam_size=1, n_best=1))[0]) == 1
    # beam_size 1 with n_best 1 is greedy, but n_best > 1 needs the beam
    assert len(decode(tiny, batch, Decoding(beam_size=2, n_best=2))[0]) == 2
    drawn = Decoding(sampling=True, temperature=2.0)
    assert same(decode(tiny, batch, drawn, True, torch.Generator().manual_seed(4)),
                sample(tiny, src, lengths, drawn, torch.Generator().manual_seed(4), True))


def test_decode_takes_a_training_batch(tiny, sources):
    src, lengths = sources
    empty = torch.zeros(5, 1, dtype=torch.long)
    training = Batch(src, lengths, empty, empty, torch.arange(5))
    d = Decoding(beam_size=2)
    assert same(decode(tiny, training, d, True), decode(tiny, SourceBatch(src, lengths), d, True))


def test_decode_needs_only_the_protocol():
    src, lengths = table_batch([1, 0], [3, 3])
    hyps = decode(PlainModel(), SourceBatch(src, lengths), Decoding(beam_size=2, alpha=0.0))
    assert [[h.tokens for h in hs] for hs in hyps] == [[[5]], [[4]]]  # SWAPPED: B; HAND: A
