"""Search by properties, on two fake models that implement the step interface.

- ``TableModel``: log-probabilities read from a table indexed by (sentence, step,
  previous token), so beam search can be checked against a brute-force enumeration
  of every output and against a plain one-sentence reference beam search.
- ``TinyModel``: a small random attentional GRU whose outputs ignore padded source
  positions, so batched and one-by-one decoding must agree.

Neither depends on nmt/model.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nmt.core.errors import ConfigError
from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.decoding.beam import beam_search
from nmt.decoding.options import Decoding
from nmt.decoding.search import (
    Hypothesis,
    greedy_search,
    max_lengths,
    sample,
)

NEG_INF = float("-inf")


pytestmark = pytest.mark.usefixtures("one_thread")


class FakeEnc(NamedTuple):
    memory: torch.Tensor  # (B, S, M)
    keys: torch.Tensor  # (B, S, M)
    mask: torch.Tensor  # (B, S) bool
    final: torch.Tensor | None


def reorder_enc(enc: FakeEnc, index: torch.Tensor) -> FakeEnc:
    return FakeEnc(*(None if t is None else t.index_select(0, index) for t in enc))


def sequence_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size) < lengths.unsqueeze(1)  # (B, S)


# -- the table model ---------------------------------------------------------------------------

REAL = (4, 5, 6)  # the tokens a table can produce, besides EOS
VOCAB = 7


class TableModel:
    """Log-probabilities ``table[src[:, 0], step, prev]``; the table is (N, T, V, V).

    The first source token picks the sentence's table; steps past T use the last one.
    The state is the step counter of each row.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> FakeEnc:
        memory = src.float().unsqueeze(-1)  # (B, S, 1)
        return FakeEnc(memory, memory, sequence_mask(src_lengths, src.size(1)), None)

    def init_state(self, enc: FakeEnc) -> torch.Tensor:
        return torch.zeros(enc.memory.size(0), dtype=torch.long)  # (B,)

    def step(self, prev: torch.Tensor, state: torch.Tensor, enc: FakeEnc):
        which = enc.memory[:, 0, 0].long()  # (B,)
        logits = self.table[which, state.clamp(max=self.table.size(1) - 1), prev]  # (B, V)
        attn = enc.mask.float() / enc.mask.sum(1, keepdim=True)  # (B, S)
        return logits, state + 1, attn

    def reorder_encoder(self, enc: FakeEnc, index: torch.Tensor) -> FakeEnc:
        return reorder_enc(enc, index)

    def reorder_state(self, state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)

    def log_probs(self, which: int, prefix: tuple[int, ...]) -> list[float]:
        step = min(len(prefix), self.table.size(1) - 1)
        prev = prefix[-1] if prefix else BOS_ID
        return self.table[which, step, prev].tolist()


def random_table(n: int, steps: int, seed: int) -> torch.Tensor:
    """(n, steps, V, V) log-probs over EOS and REAL; other tokens get -inf."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, steps, VOCAB, VOCAB, generator=g) * 1.5
    logits[..., [PAD_ID, UNK_ID, BOS_ID]] = NEG_INF
    return F.log_softmax(logits, dim=-1)


def table_from_probs(probs: dict[int, dict[int, float]]) -> torch.Tensor:
    """One table, the same at every step, from P(next | prev)."""
    table = torch.full((1, 1, VOCAB, VOCAB), NEG_INF)
    for prev, row in probs.items():
        for tok, p in row.items():
            table[0, 0, prev, tok] = math.log(p)
    return table


def table_batch(which: list[int], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources whose first token picks the table (lengths >= 2: the last one is EOS)."""
    src = torch.full((len(which), max(lengths)), PAD_ID)
    for i, (w, n) in enumerate(zip(which, lengths, strict=True)):
        src[i, :n] = 9
        src[i, 0], src[i, n - 1] = w, EOS_ID
    return src, torch.tensor(lengths)


def allowed(tok: int, step: int, limit: int, min_len: int) -> bool:
    """The search's rules for output position ``step`` (0-based)."""
    if tok == EOS_ID:
        return step + 1 == limit or step >= min_len
    return step + 1 < limit


def penalized(score: float, length: int, alpha: float) -> float:
    """``score`` over GNMT's length penalty ((5 + length) / 6) ** alpha (``length`` counts
    the EOS), written out here: the oracles must not share the search's own formula."""
    return score / ((5 + length) / 6) ** alpha


def brute_force(model: TableModel, which: int, limit: int, min_len: int, alpha: float
                ) -> list[tuple[float, tuple[int, ...]]]:
    """Every possible output with its penalized score, best first."""
    outputs = []

    def extend(prefix: tuple[int, ...], score: float) -> None:
        lps, step = model.log_probs(which, prefix), len(prefix)
        if allowed(EOS_ID, step, limit, min_len):
            outputs.append((penalized(score + lps[EOS_ID], step + 1, alpha), prefix))
        for tok in REAL:
            if allowed(tok, step, limit, min_len):
                extend((*prefix, tok), score + lps[tok])

    extend((), 0.0)
    return sorted(outputs, key=lambda o: -o[0])


def reference_beam(model: TableModel, which: int, limit: int, min_len: int, alpha: float,
                   k: int, n_best: int) -> list[tuple[float, tuple[int, ...]]]:
    """Textbook beam search on one sentence: keep the K best, stop at K finished."""
    live: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    finished = []
    for step in range(limit):
        cands = []
        for prefix, score in live:
            lps = model.log_probs(which, prefix)
            cands += [(score + lps[tok], prefix, tok) for tok in (EOS_ID, *REAL)
                      if allowed(tok, step, limit, min_len) and lps[tok] > NEG_INF]
        cands.sort(key=lambda c: -c[0])
        top = cands[: 2 * k]
        finished += [(penalized(s, step + 1, alpha), p) for s, p, t in top[:k]
                     if t == EOS_ID]
        live = [((*p, t), s) for s, p, t in top if t != EOS_ID][:k]
        if len(finished) >= k or not live:
            break
    return sorted(finished, key=lambda f: -f[0])[:n_best]


def assert_same(hyps: list[Hypothesis], expected: list[tuple[float, tuple[int, ...]]]) -> None:
    assert [tuple(h.tokens) for h in hyps] == [tokens for _, tokens in expected]
    assert [h.score for h in hyps] == pytest.approx([s for s, _ in expected], abs=1e-5)


# -- beam bookkeeping on tables ----------------------------------------------------------------

A, B = 4, 5
HAND = table_from_probs({
    BOS_ID: {A: 0.5, B: 0.4, EOS_ID: 0.1},
    A: {A: 0.3, B: 0.1, EOS_ID: 0.6},
    B: {A: 0.2, B: 0.7, EOS_ID: 0.1},
})


def test_beam_by_hand():
    # K=2. Step 0: a .5, b .4 live. Step 1: the 4 best are aEOS .30, bb .28, aa .15,
    # ba .08; aEOS is among the first 2 and finishes, bb and aa go on. Step 2: bbb .196,
    # aaEOS .09, bba .056, aaa .045: aaEOS finishes; 2 finished, the sentence is done.
    src, lengths = table_batch([0], [3])
    [hyps] = beam_search(TableModel(HAND), src, lengths,
                         Decoding(beam_size=2, alpha=0.0, n_best=2))
    assert_same(hyps, [(math.log(0.3), (A,)), (math.log(0.09), (A, A))])
    # With alpha=1 the order of events is the same; scores are divided by (5 + len) / 6,
    # len counting EOS.
    [hyps] = beam_search(TableModel(HAND), src, lengths,
                         Decoding(beam_size=2, alpha=1.0, n_best=2))
    assert_same(hyps, [(math.log(0.3) / (7 / 6), (A,)), (math.log(0.09) / (8 / 6), (A, A))])


def test_greedy_by_hand_with_min_and_max_length():
    src, lengths = table_batch([0], [3])
    model = TableModel(HAND)
    [[hyp]] = greedy_search(model, src, lengths, Decoding())
    assert (hyp.tokens, hyp.score) == ([A], pytest.approx(math.log(0.5 * 0.6)))
    # EOS forbidden at steps 0 and 1: a, then a (.3, EOS .6 being forbidden), then EOS.
    [[hyp]] = greedy_search(model, src, lengths, Decoding(min_len=2))
    assert (hyp.tokens, hyp.score) == ([A, A], pytest.approx(math.log(0.5 * 0.3 * 0.6)))
    # A limit of 3 tokens, EOS included, beats min_len=5: EOS is forced at step 2 and
    # scored with the model's own log-probability of EOS there.
    [[hyp]] = greedy_search(model, src, lengths,
                              Decoding(min_len=5, max_len_a=0, max_len_b=3))
    assert (hyp.tokens, hyp.score) == ([A, A], pytest.approx(math.log(0.5 * 0.3 * 0.6)))
    # Beam (K=2): bb .28 and aa .15 live after step 1, then both must end: aa EOS .09 wins.
    [[hyp]] = beam_search(model, src, lengths, Decoding(beam_size=2, alpha=0.0, min_len=5,
                                                          max_len_a=0, max_len_b=3))
    assert (hyp.tokens, hyp.score) == ([A, A], pytest.approx(math.log(0.5 * 0.3 * 0.6)))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
@pytest.mark.parametrize("min_len", [0, 2])
@pytest.mark.parametrize("n_best", [1, 7])
def test_wide_beam_equals_brute_force(alpha, min_len, n_best):
    # 3 real tokens, at most 4 output tokens (EOS included): at most 9 live prefixes x 4
    # = 36 candidates per step, so a beam of 36 prunes nothing and must find the true n
    # best of the 40 possible outputs.
    model = TableModel(random_table(3, 4, seed=11))
    src, lengths = table_batch([0, 1, 2], [3, 3, 3])
    decoding = Decoding(beam_size=36, alpha=alpha, max_len_a=0, max_len_b=4, min_len=min_len,
                        n_best=n_best)
    results = beam_search(model, src, lengths, decoding)
    for which, hyps in enumerate(results):
        assert_same(hyps, brute_force(model, which, 4, min_len, alpha)[:n_best])


@pytest.mark.parametrize(("k", "alpha", "min_len", "n_best"), [
    (1, 0.0, 0, 1), (2, 0.6, 0, 2), (3, 1.0, 1, 1), (3, 0.0, 0, 3), (4, 0.6, 3, 2),
])
def test_narrow_beam_equals_reference(k, alpha, min_len, n_best):
    # Six sentences with their own tables and length limits (the source length), in one
    # batch: pruning, refilled slots, early stopping and rows leaving the batch.
    model = TableModel(random_table(6, 8, seed=k))
    lengths = [5, 2, 8, 3, 6, 2]
    src, src_lengths = table_batch(list(range(6)), lengths)
    decoding = Decoding(beam_size=k, alpha=alpha, max_len_a=1, max_len_b=0, min_len=min_len,
                        n_best=n_best)
    results = beam_search(model, src, src_lengths, decoding)
    for which, hyps in enumerate(results):
        expected = reference_beam(model, which, lengths[which], min_len, alpha, k, n_best)
        assert_same(hyps, expected)


def test_tiny_vocabulary_gives_what_exists():
    # One real token and a limit of 2: only [] and [a] exist, fewer than n_best=3.
    table = table_from_probs({BOS_ID: {A: 0.9, EOS_ID: 0.1}, A: {A: 0.5, EOS_ID: 0.5}})
    src, lengths = table_batch([0], [2])
    [hyps] = beam_search(TableModel(table), src, lengths, Decoding(
        beam_size=4, alpha=0.0, n_best=3, max_len_a=0, max_len_b=2))
    assert_same(hyps, [(math.log(0.45), (A,)), (math.log(0.1), ())])


# -- a model that is nothing but the protocol ------------------------------------------------

SWAPPED = table_from_probs({  # HAND with A and B exchanged
    BOS_ID: {B: 0.5, A: 0.4, EOS_ID: 0.1},
    B: {B: 0.3, A: 0.1, EOS_ID: 0.6},
    A: {B: 0.2, A: 0.7, EOS_ID: 0.1},
})


class PlainModel:
    """The five methods of SearchModel and nothing else: no nn.Module, no parameters, and
    an encoder output and a state that are plain lists, which search must only pass back.

    Sources starting with 0 decode with HAND, with 1 with SWAPPED. Each state row keeps
    its table and the tokens read, so a step can check that the encoder output and the
    state were reordered together.
    """

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> list[int]:
        return src[:, 0].tolist()  # the table of each row

    def init_state(self, enc: list[int]) -> list[tuple[int, tuple[int, ...]]]:
        return [(which, ()) for which in enc]

    def step(self, prev: torch.Tensor, state: list, enc: list[int]):
        tokens = prev.tolist()
        assert [which for which, _ in state] == enc  # reordered together
        assert all((tok == BOS_ID) == (not read)  # BOS is read first, and only then
                   for (_, read), tok in zip(state, tokens, strict=True))
        logits = torch.stack([(HAND, SWAPPED)[which][0, 0, tok]
                              for which, tok in zip(enc, tokens, strict=True)])  # (b, V)
        new = [(which, (*read, tok)) for (which, read), tok in zip(state, tokens, strict=True)]
        return logits, new, None  # no attention

    def reorder_encoder(self, enc: list[int], index: torch.Tensor) -> list[int]:
        return [enc[i] for i in index.tolist()]

    def reorder_state(self, state: list, index: torch.Tensor) -> list:
        return [state[i] for i in index.tolist()]


def test_search_needs_only_the_protocol():
    src, lengths = table_batch([0, 1], [3, 3])
    model = PlainModel()
    greedy = greedy_search(model, src, lengths, Decoding(), return_attention=True)
    assert [[(h.tokens, h.attention) for h in hs] for hs in greedy] == [[([A], None)],
                                                                         [([B], None)]]
    assert [hs[0].score for hs in greedy] == pytest.approx([math.log(0.3)] * 2)
    # As test_beam_by_hand, for both sentences in one batch: rows leave and are reordered.
    beam = beam_search(model, src, lengths, Decoding(beam_size=2, alpha=0.0, n_best=2),
                       return_attention=True)
    assert_same(beam[0], [(math.log(0.3), (A,)), (math.log(0.09), (A, A))])
    assert_same(beam[1], [(math.log(0.3), (B,)), (math.log(0.09), (B, B))])
    assert all(h.attention is None for hs in beam for h in hs)


# -- properties on a small random model --------------------------------------------------------


class TinyState(NamedTuple):
    hidden: torch.Tensor  # (B, H)
    feed: torch.Tensor  # (B, H) the previous attention context
    steps: torch.Tensor  # (B,) tokens read so far


class TinyModel(nn.Module):
    """A random GRU decoder with dot attention over a position-wise encoder.

    Padded source positions are masked everywhere, so a sentence's outputs do not
    depend on the batch it is in. EOS grows likelier as the output length catches up
    with the source length, so outputs vary in length and mostly end by themselves.
    PAD and BOS get a logit bonus, to show that search never produces them anyway.
    """

    def __init__(self, vocab: int = 24, size: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.src_embed = nn.Embedding(vocab, size)
            self.tgt_embed = nn.Embedding(vocab, size)
            self.enc = nn.Linear(size, size)
            self.cell = nn.GRUCell(2 * size, size)
            self.mix = nn.Linear(2 * size, size)
            self.out = nn.Linear(size, vocab)
            nn.init.normal_(self.out.weight)  # peaked distributions
        self.bonus = torch.zeros(vocab)
        self.bonus[[PAD_ID, BOS_ID]] = 3.0
        self.steps: list[int] = []  # rows of every step call, for the efficiency tests

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> FakeEnc:
        mask = sequence_mask(src_lengths, src.size(1))  # (B, S)
        memory = torch.tanh(self.enc(self.src_embed(src))) * mask.unsqueeze(-1)  # (B, S, H)
        final = memory.sum(1) / src_lengths.unsqueeze(1)  # (B, H)
        return FakeEnc(memory, memory, mask, final)

    def init_state(self, enc: FakeEnc) -> TinyState:
        zeros = torch.zeros(enc.final.size(0))
        return TinyState(torch.tanh(enc.final), torch.zeros_like(enc.final), zeros)

    def step(self, prev: torch.Tensor, state: TinyState, enc: FakeEnc):
        self.steps.append(prev.size(0))
        h = self.cell(torch.cat([self.tgt_embed(prev), state.feed], dim=-1), state.hidden)
        scores = (enc.keys @ h.unsqueeze(2)).squeeze(2).masked_fill(~enc.mask, NEG_INF)
        attn = scores.softmax(dim=-1)  # (B, S)
        context = (attn.unsqueeze(1) @ enc.memory).squeeze(1)  # (B, H)
        out = torch.tanh(self.mix(torch.cat([h, context], dim=-1)))  # (B, H)
        logits = 2 * self.out(out) + self.bonus  # (B, V)
        logits[:, EOS_ID] += 1.5 * (state.steps + 1 - enc.mask.sum(1))
        return logits, TinyState(h, context, state.steps + 1), attn

    def reorder_encoder(self, enc: FakeEnc, index: torch.Tensor) -> FakeEnc:
        return reorder_enc(enc, index)

    def reorder_state(self, state: TinyState, index: torch.Tensor) -> TinyState:
        return TinyState(*(t.index_select(0, index) for t in state))


@pytest.fixture(scope="module")
def model():
    return TinyModel().eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 3, 6, 1, 7, 4])
    src = torch.randint(4, 24, (6, 9), generator=g)
    src[~sequence_mask(lengths, 9)] = PAD_ID
    src[torch.arange(6), lengths - 1] = EOS_ID
    return src, lengths


def rescore(model: TinyModel, src: torch.Tensor, length: int, tokens: list[int]
            ) -> tuple[float, torch.Tensor]:
    """Teacher-forced log-probability of tokens + EOS, and the attention rows."""
    with torch.no_grad():
        enc = model.encode(src[:length].unsqueeze(0), torch.tensor([length]))
        state = model.init_state(enc)
        total, rows, prev = 0.0, [], BOS_ID
        for tok in [*tokens, EOS_ID]:
            logits, state, attn = model.step(torch.tensor([prev]), state, enc)
            total += F.log_softmax(logits.float(), dim=-1)[0, tok].item()
            rows.append(attn[0])
            prev = tok
    return total, torch.stack(rows)


def generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SEARCHES = {  # options as keywords, as for a Decoding
    "greedy": lambda m, s, n, return_attention=False, **kw: greedy_search(
        m, s, n, Decoding(**kw), return_attention=return_attention),
    "beam": lambda m, s, n, return_attention=False, **kw: beam_search(
        m, s, n, Decoding(beam_size=4, n_best=3, **kw), return_attention=return_attention),
    "sample": lambda m, s, n, return_attention=False, **kw: sample(
        m, s, n, Decoding(**kw), generator=generator(), return_attention=return_attention),
}


@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize(("max_len_a", "max_len_b", "min_len"), [(1.5, 10, 0), (0.5, 3, 2)])
def test_hypotheses_are_well_formed(model, batch, name, max_len_a, max_len_b, min_len):
    src, lengths = batch
    results = SEARCHES[name](model, src, lengths, max_len_a=max_len_a, max_len_b=max_len_b,
                             min_len=min_len, return_attention=True)
    assert len(results) == 6
    for i, hyps in enumerate(results):
        n = int(lengths[i])
        limit = int(max_len_a * n + max_len_b)
        assert len(hyps) == (3 if name == "beam" else 1)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
        for h in hyps:
            assert not {EOS_ID, BOS_ID, PAD_ID} & set(h.tokens)  # EOS ends, never inside
            assert min(min_len, limit - 1) <= len(h.tokens) <= limit - 1  # EOS included
            logprob, attention = rescore(model, src[i], n, h.tokens)
            alpha = 0.6 if name == "beam" else 0.0  # greedy's score is not penalized
            assert h.score == pytest.approx(penalized(logprob, len(h.tokens) + 1, alpha),
                                            abs=1e-4)
            assert h.attention.shape == (len(h.tokens) + 1, n)
            torch.testing.assert_close(h.attention, attention, atol=1e-5, rtol=1e-4)
            assert not torch.is_inference(h.attention)  # usable outside inference mode


def test_limits_and_eos_are_both_exercised(model, batch):
    # Guards the test model: with these limits some outputs end by themselves, some are cut.
    src, lengths = batch
    hyps = [h for hs in beam_search(model, src, lengths, Decoding(
        beam_size=4, n_best=4, max_len_a=0.5, max_len_b=3)) for h in hs]
    limits = [int(0.5 * int(n) + 3) for n in lengths for _ in range(4)]
    cut = [len(h.tokens) == limit - 1 for h, limit in zip(hyps, limits, strict=True)]
    assert any(cut) and not all(cut)


def test_beam_one_equals_greedy(model, batch):
    greedy = greedy_search(model, *batch, Decoding())
    for alpha in (0.0, 0.6):
        beam = beam_search(model, *batch, Decoding(beam_size=1, alpha=alpha))
        for [g], [b] in zip(greedy, beam, strict=True):
            assert b.tokens == g.tokens
            assert b.score == pytest.approx(penalized(g.score, len(g.tokens) + 1, alpha),
                                            abs=1e-5)


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_independent_of_batch_size_and_order(model, batch, name):
    src, lengths = batch
    search = SEARCHES[name]
    together = search(model, src, lengths)
    alone = [search(model, src[i:i + 1, : int(n)], lengths[i:i + 1])[0]
             for i, n in enumerate(lengths)]
    reverse = search(model, src.flip(0), lengths.flip(0))[::-1]
    for a, b, c in zip(together, alone, reverse, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b] == [h.tokens for h in c]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
        assert [h.score for h in c] == pytest.approx([h.score for h in b], abs=1e-4)


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_done_sentences_leave_the_batch(model, batch, name):
    # Batched decoding does exactly the work of one-by-one decoding, in as many steps as
    # the longest sentence: no step is spent on a sentence that is done.
    src, lengths = batch
    search = SEARCHES[name]
    model.steps.clear()
    search(model, src, lengths)
    batched = list(model.steps)
    alone = []
    for i, n in enumerate(lengths):
        model.steps.clear()
        search(model, src[i:i + 1, : int(n)], lengths[i:i + 1])
        alone.append(list(model.steps))
    assert sum(batched) == sum(map(sum, alone))
    assert len(batched) == max(map(len, alone))
    assert batched == sorted(batched, reverse=True) or name == "beam"  # beam: 1 row, then K
    assert batched[-1] < batched[1]


def test_early_stop_keeps_the_best(model, batch):
    # With n_best=1 a sentence may stop before it has K finished hypotheses, only when no
    # live one can beat the best: the answer is the same as the full list's first.
    full = beam_search(model, *batch, Decoding(beam_size=5, n_best=5, alpha=0.6))
    model.steps.clear()
    best = beam_search(model, *batch, Decoding(beam_size=5, n_best=1, alpha=0.6))
    assert [b[0].tokens for b in best] == [f[0].tokens for f in full]
    assert [b[0].score for b in best] == pytest.approx([f[0].score for f in full])


def test_empty_batch(model):
    src, lengths = torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    for search in SEARCHES.values():
        assert search(model, src, lengths) == []


def test_max_lengths_count_eos():
    assert max_lengths(torch.tensor([1, 7, 10]), 1.5, 10).tolist() == [11, 20, 25]
    assert max_lengths(torch.tensor([3]), 0.1, 0).tolist() == [1]  # room for EOS at least


# -- sampling ----------------------------------------------------------------------------------


def test_sampling_is_reproducible(model, batch):
    def draw(seed: int, **kwargs: Any) -> list[list[int]]:
        hyps = sample(model, *batch, Decoding(**kwargs), generator=generator(seed))
        return [h[0].tokens for h in hyps]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    greedy = [h[0].tokens for h in greedy_search(model, *batch, Decoding())]
    assert draw(3, top_k=1) == greedy
    assert draw(3, temperature=1e-3) == greedy  # a cold distribution is the argmax


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 0), (0.5, 0), (2.0, 0), (1.0, 3),
                                                    (2.0, 5)])
def test_sampling_follows_the_distribution(model, batch, temperature, top_k):
    # 2000 copies of one sentence, one free token each: the first tokens' frequencies
    # follow softmax(log-probs / temperature) restricted to the top k.
    src, lengths = batch
    with torch.no_grad():
        enc = model.encode(src[:1], lengths[:1])
        logits, _, _ = model.step(torch.tensor([BOS_ID]), model.init_state(enc), enc)
    lprobs = F.log_softmax(logits[0], dim=-1)
    lprobs[[PAD_ID, BOS_ID]] = NEG_INF  # never generated
    scores = lprobs / temperature
    if top_k:
        scores[scores < scores.topk(top_k).values[-1]] = NEG_INF
    expected = scores.softmax(-1)

    n = 2000
    hyps = sample(model, src[:1].expand(n, -1), lengths[:1].expand(n),
                  Decoding(temperature=temperature, top_k=top_k, max_len_a=0, max_len_b=2),
                  generator=generator(7))
    first = torch.tensor([h[0].tokens[0] if h[0].tokens else EOS_ID for h in hyps])
    freq = torch.bincount(first, minlength=expected.numel()).float() / n
    assert set(first.tolist()) <= set(expected.nonzero().squeeze(1).tolist())
    assert (freq - expected).abs().max() < 0.04


# -- argument errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("search", "kwargs", "match"), [
    (beam_search, {"beam_size": 0}, "beam_size must be >= 1, got 0"),
    (beam_search, {"beam_size": 2, "n_best": 3},
     r"n_best must be between 1 and beam_size \(2\), got 3"),
    (beam_search, {"n_best": 0}, r"n_best must be between 1 and beam_size \(5\), got 0"),
    (sample, {"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    (sample, {"top_k": -1}, r"top_k must be >= 0 \(0: the full distribution\), got -1"),
    (greedy_search, {"min_len": -1}, "min_len must be >= 0, got -1"),
    (beam_search, {"min_len": -2}, "min_len must be >= 0, got -2"),
    (sample, {"min_len": -1}, "min_len must be >= 0, got -1"),
    (greedy_search, {"max_len_a": 0, "max_len_b": 0}, "not both 0"),
    (beam_search, {"max_len_a": -1.0}, "max_len_a and max_len_b must be >= 0"),
])
def test_bad_arguments(model, batch, search, kwargs, match):
    # The options are checked once, by Decoding: a search never gets bad ones.
    with pytest.raises(ConfigError, match=match):
        search(model, *batch, Decoding(**kwargs))
