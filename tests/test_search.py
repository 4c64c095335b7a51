"""Search by properties, and beam bookkeeping on a step function with fixed probabilities."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.model import Seq2Seq
from nmt.model.encoder import sequence_mask
from nmt.search import beam_search, greedy_search, length_penalty, sample

A, B = 4, 5  # the two real tokens of the table model

# P(next | previous), the same at every step (tokens 0, 1 never occur).
TABLE = {
    BOS_ID: {A: 0.6, B: 0.3, EOS_ID: 0.1},
    A: {A: 0.1, B: 0.2, EOS_ID: 0.7},
    B: {A: 0.5, B: 0.15, EOS_ID: 0.35},
}


class FakeEnc(NamedTuple):
    memory: torch.Tensor
    keys: torch.Tensor
    mask: torch.Tensor
    final: None = None


class TableModel:
    """Implements the search interface with log-probabilities from TABLE."""

    vocab = 6

    def encode(self, src, src_lengths):
        mask = sequence_mask(src_lengths, src.size(1))
        memory = src.float().unsqueeze(-1)
        return FakeEnc(memory, memory, mask)

    def init_state(self, enc):
        return torch.zeros(enc.memory.size(0))

    def step(self, prev, state, enc):
        logits = torch.full((prev.size(0), self.vocab), float("-inf"))
        for row, p in enumerate(prev.tolist()):
            if p not in TABLE:  # a dead beam (score -inf) may carry any token
                logits[row] = 0.0
            for tok, prob in TABLE.get(p, {}).items():
                logits[row, tok] = math.log(prob)
        attn = enc.mask.float() / enc.mask.sum(1, keepdim=True)
        return logits, state, attn

    def reorder_encoder(self, enc, index):
        return FakeEnc(*(t.index_select(0, index) for t in enc[:3]))

    def reorder_state(self, state, index):
        return state.index_select(0, index)


def one_source(n: int = 1):
    return torch.full((n, 3), 7), torch.full((n,), 3)


def test_beam_bookkeeping_by_hand():
    # K=2. Step 0: live a (.6), b (.3). Step 1: a+EOS (.42) is among the first K
    # candidates and finishes; b a (.15), a b (.12) go on. Step 2: b a EOS (.105)
    # finishes: two finished hypotheses, the sentence is done.
    src, lengths = one_source()
    [hyps] = beam_search(TableModel(), src, lengths, beam_size=2, alpha=0.0, n_best=2)
    assert [h.tokens for h in hyps] == [[A], [B, A]]
    assert hyps[0].score == pytest.approx(math.log(0.42))
    assert hyps[1].score == pytest.approx(math.log(0.105))


def test_beam_length_penalty_scores():
    src, lengths = one_source()
    [hyps] = beam_search(TableModel(), src, lengths, beam_size=2, alpha=1.0, n_best=2)
    # length counts EOS: [a] has length 2, [b, a] length 3
    assert hyps[0].score == pytest.approx(math.log(0.42) / ((5 + 2) / 6))
    assert hyps[1].score == pytest.approx(math.log(0.105) / ((5 + 3) / 6))
    assert length_penalty(2, 0.0) == 1.0


def test_greedy_on_the_table():
    src, lengths = one_source()
    [[hyp]] = greedy_search(TableModel(), src, lengths)
    assert hyp.tokens == [A] and hyp.score == pytest.approx(math.log(0.42))


def test_min_len_forbids_early_eos():
    src, lengths = one_source()
    [[hyp]] = greedy_search(TableModel(), src, lengths, min_len=3)
    # EOS impossible at steps 0-2: a, then b (.2) over a (.1), then a (.5), then EOS (.7)
    assert hyp.tokens == [A, B, A]
    assert hyp.score == pytest.approx(math.log(0.6 * 0.2 * 0.5 * 0.7))
    [beam] = beam_search(TableModel(), src, lengths, beam_size=3, min_len=3, n_best=3)
    assert all(len(h.tokens) >= 3 for h in beam)


def test_max_len_forces_eos():
    src, lengths = one_source()
    [[hyp]] = greedy_search(TableModel(), src, lengths, min_len=5, max_len_a=0, max_len_b=3)
    assert len(hyp.tokens) == 2  # 3 tokens at most, EOS included
    [beam] = beam_search(TableModel(), src, lengths, beam_size=2, min_len=5, max_len_a=0,
                         max_len_b=3)
    assert len(beam[0].tokens) == 2


# --- properties on a real (random, tiny) model -----------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return Seq2Seq(40, 40, emb_size=16, encoder_hidden=16, decoder_hidden=24,
                   dropout=0.0).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 3, 6, 1, 7, 4])
    src = torch.randint(4, 40, (6, 9), generator=g)
    src[~sequence_mask(lengths, 9)] = 0
    src[torch.arange(6), lengths - 1] = EOS_ID
    return src, lengths


def test_beam_one_equals_greedy(model, batch):
    greedy = greedy_search(model, *batch)
    beam = beam_search(model, *batch, beam_size=1, alpha=0.0)
    assert [g[0].tokens for g in greedy] == [b[0].tokens for b in beam]
    for g, b in zip(greedy, beam, strict=True):
        assert g[0].score == pytest.approx(b[0].score, abs=1e-4)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_independent_of_batch_size_and_order(model, batch, search):
    src, lengths = batch

    def run(s, n):
        if search == "greedy":
            return greedy_search(model, s, n)
        return beam_search(model, s, n, beam_size=4, n_best=2)

    together = run(src, lengths)
    alone = [run(src[i:i + 1, : int(lengths[i])], lengths[i:i + 1])[0] for i in range(6)]
    reverse = run(src.flip(0), lengths.flip(0))[::-1]
    for a, b, c in zip(together, alone, reverse, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b] == [h.tokens for h in c]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_nbest_sorted_and_eos_free(model, batch):
    results = beam_search(model, *batch, beam_size=5, n_best=5, max_len_a=1.0, max_len_b=4)
    for hyps, n in zip(results, batch[1].tolist(), strict=True):
        assert len(hyps) == 5
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5  # distinct hypotheses
        for h in hyps:
            assert EOS_ID not in h.tokens and BOS_ID not in h.tokens
            assert len(h.tokens) + 1 <= int(n * 1.0 + 4)


def test_attention_is_returned_per_token(model, batch):
    src, lengths = batch
    for results in (greedy_search(model, src, lengths, return_attention=True),
                    beam_search(model, src, lengths, beam_size=3, return_attention=True)):
        for hyps, n in zip(results, lengths.tolist(), strict=True):
            h = hyps[0]
            assert h.attention.shape == (len(h.tokens) + 1, n)
            torch.testing.assert_close(h.attention.sum(-1), torch.ones(len(h.tokens) + 1))


def test_sampling(model, batch):
    def draw(seed, **kwargs):
        g = torch.Generator().manual_seed(seed)
        return [h[0].tokens for h in sample(model, *batch, generator=g, **kwargs)]

    assert draw(1) == draw(1)  # reproducible with a seeded generator
    assert draw(1) != draw(2)
    greedy = [h[0].tokens for h in greedy_search(model, *batch)]
    assert draw(5, top_k=1) == greedy
    assert draw(5, temperature=1e-4) == greedy  # a cold distribution is the argmax


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    (beam_search, {"beam_size": 0}, "beam_size must be >= 1, got 0"),
    (beam_search, {"beam_size": 2, "n_best": 3}, r"n_best must be between 1 and beam_size \(2\)"),
    (sample, {"temperature": 0.0}, "temperature must be > 0"),
    (sample, {"top_k": -1}, "top_k must be >= 0"),
    (greedy_search, {"min_len": -1}, "min_len must be >= 0"),
    (greedy_search, {"max_len_a": 0, "max_len_b": 0}, "not both 0"),
])
def test_bad_arguments(model, batch, fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(model, *batch, **kwargs)
