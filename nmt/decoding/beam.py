"""Batched beam search, on the conventions of nmt/decoding/search.py (lengths count the EOS, PAD
and BOS never generated, done sentences leave the batch).

The search state lives in two objects that rows leave together: ``_Sentences``, one row
per sentence still searched, and ``_Beam``, its live hypotheses, reordered by one
``select`` per step. A step scores the continuations (``_candidates``), finishes those
ending in EOS (``_harvest``), keeps the best others live (``_live``) and ends the
sentences that are done (``_done``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F

from nmt.core.tokens import BOS_ID, EOS_ID
from nmt.decoding.search import (
    NEG_INF,
    Hypothesis,
    SearchModel,
    constrain,
    length_penalty,
    max_lengths,
)

if TYPE_CHECKING:  # nmt.decoding imports this module; search only reads the options
    from nmt.decoding.options import Decoding


def beam_search(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
                decoding: Decoding, return_attention: bool = False
                ) -> list[list[Hypothesis]]:
    """Batched beam search: the ``n_best`` best hypotheses of each sentence, best first.

    Rows are batch x beam flattened, (B * K); the first step runs on the B sentences
    alone (their K beams would be copies), after which the encoder output is expanded
    once with ``reorder_encoder``. Each step ranks the K * V continuations of a
    sentence by summed log-probability and takes the best 2K: those ending in EOS
    among the first K are finished (ranked by score / length_penalty), and the best K
    others go on, so K hypotheses stay live. A sentence is done when

    1. it has K finished hypotheses (the usual rule, as in fairseq), or
    2. it has ``n_best`` finished ones and no live one can still score above the worst
       of them: log-probabilities only fall, so a live score s bounds every extension
       by s / (the largest length penalty it can still reach). The answer is the one
       rule 1 alone gives; it only saves steps when ``n_best`` < K; or
    3. it reaches its length limit: the live hypotheses are finished there with EOS.

    Done sentences leave the batch. A sentence has fewer than ``n_best`` hypotheses
    only when fewer complete outputs are possible (a tiny vocabulary, -inf logits).
    ``alpha`` = 0 ranks by summed log-probability.
    """
    if src.size(0) == 0:
        return []
    with torch.inference_mode():
        finished = _beam(model, src, src_lengths, decoding, return_attention)
    results = []
    for hyps in finished:
        hyps.sort(key=lambda h: h[0], reverse=True)
        # clone outside inference mode: callers get ordinary tensors
        results.append([Hypothesis(tokens, score, None if attn is None else attn.clone())
                        for score, tokens, attn in hyps[: decoding.n_best]])
    return results


_Finished = list[tuple[float, list[int], torch.Tensor | None]]  # (score, tokens, attention)


class _Sentences(NamedTuple):
    """The b sentences still searched, one row each; done ones leave with ``select``."""

    # not `index`: that name would shadow tuple.index
    batch_index: torch.Tensor  # (b,) position in the input batch
    limits: torch.Tensor  # (b,) most output tokens, EOS included
    max_lp: torch.Tensor  # (b,) the length penalty at the limit
    n_finished: torch.Tensor  # (b,) finished hypotheses so far
    best_finished: torch.Tensor  # (b, n_best) their best scores, descending, -inf padded
    next_limit: int  # the first step at which some sentence must end

    @classmethod
    def start(cls, src_lengths: torch.Tensor, d: Decoding) -> _Sentences:
        batch, device = src_lengths.size(0), src_lengths.device
        limits = max_lengths(src_lengths, d.max_len_a, d.max_len_b, d.max_len)  # (B,)
        return cls(torch.arange(batch, device=device), limits,
                   length_penalty(limits.float(), d.alpha),
                   torch.zeros(batch, dtype=torch.long, device=device),
                   torch.full((batch, d.n_best), NEG_INF, device=device), int(limits.min()))

    def select(self, keep: torch.Tensor) -> _Sentences:
        limits = self.limits[keep]
        return _Sentences(self.batch_index[keep], limits, self.max_lp[keep], self.n_finished[keep],
                          self.best_finished[keep], int(limits.min()))


class _Beam(NamedTuple):
    """The live hypotheses, W per sentence in rows (b * W): W is 1 at the first step."""

    state: Any  # the model's decoder state, one row per hypothesis
    prev: torch.Tensor  # (b*W,) the last token, next step's input
    history: torch.Tensor  # (b*W, t) the tokens so far, without BOS
    attention: torch.Tensor | None  # (b*W, t, S) when asked for; (b*W, t+1, S) in a step
    scores: torch.Tensor  # (b, W) summed log-probs

    @classmethod
    def start(cls, state: Any, batch: int, device: torch.device) -> _Beam:
        return cls(state, torch.full((batch,), BOS_ID, dtype=torch.long, device=device),
                   torch.zeros((batch, 0), dtype=torch.long, device=device), None,
                   torch.zeros(batch, 1, device=device))

    @property
    def width(self) -> int:
        return self.scores.size(1)

    def stepped(self, state: Any, attn: torch.Tensor | None) -> _Beam:
        """After the model's step: its new state and, when kept, its attention (b*W, S)."""
        attention = self.attention
        if attn is not None:
            now = attn.float().unsqueeze(1)  # (b*W, 1, S)
            attention = now if attention is None else torch.cat([attention, now], 1)
        return self._replace(state=state, attention=attention)

    def select(self, model: SearchModel, rows: torch.Tensor, tokens: torch.Tensor,
               scores: torch.Tensor) -> _Beam:
        """The next beam: row ``rows[i]`` (b'*K,) of this one, extended by ``tokens[i]``
        (b'*K,), with summed log-probs ``scores`` (b', K). The one reorder of the search."""
        return _Beam(model.reorder_state(self.state, rows), tokens,
                     torch.cat([self.history[rows], tokens.unsqueeze(1)], dim=1),
                     None if self.attention is None else self.attention[rows], scores)


class _Candidates(NamedTuple):
    """The 2K best continuations of each sentence, best first, (b, 2K) each."""

    scores: torch.Tensor  # summed log-probs
    beam: torch.Tensor  # which of the sentence's W hypotheses each extends
    tokens: torch.Tensor
    eos: torch.Tensor  # tokens == EOS


class _Live(NamedTuple):
    """The K continuations of each sentence that stay live, best first, (b, K) each."""

    scores: torch.Tensor  # summed log-probs; -inf when fewer exist
    rows: torch.Tensor  # the beam row each extends
    tokens: torch.Tensor

    def select(self, keep: torch.Tensor) -> _Live:
        return _Live(*(t[keep] for t in self))


def _beam(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor, d: Decoding,
          return_attention: bool) -> list[_Finished]:
    """The search itself: per sentence, its finished hypotheses, unsorted."""
    finished: list[_Finished] = [[] for _ in range(src.size(0))]
    src_lens = src_lengths.tolist()
    enc = model.encode(src, src_lengths)
    sents = _Sentences.start(src_lengths.to(src.device), d)
    beam = _Beam.start(model.init_state(enc), src.size(0), src.device)
    step = 0
    while True:
        logits, state, attn = model.step(beam.prev, beam.state, enc)  # (b*W, V), ., (b*W, S)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # (b*W, V)
        at_limit = None
        if step + 1 >= sents.next_limit:
            at_limit = (sents.limits <= step + 1).repeat_interleave(beam.width)  # (b*W,)
        constrain(lprobs, step, d.min_len, at_limit)
        beam = beam.stepped(state, attn if return_attention else None)
        cand = _candidates(beam.scores, lprobs, d.beam_size)
        sents = _harvest(cand, beam, sents, step, d, src_lens, finished)
        live = _live(cand, beam.width, d.beam_size)
        done = _done(sents, live.scores, step, d)  # (b,)
        keep = None
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)  # (b',)
            if keep.numel() == 0:
                return finished
            sents, live = sents.select(keep), live.select(keep)
        elif live.scores.size(1) != beam.width:  # the first step (1 row -> K) or a tiny V
            keep = torch.arange(done.numel(), device=done.device)
        if keep is not None:  # every row of a sentence holds the same encoder output
            rows = (keep * beam.width).repeat_interleave(live.scores.size(1))  # (b'*K,)
            enc = model.reorder_encoder(enc, rows)
        beam = beam.select(model, live.rows.view(-1), live.tokens.view(-1), live.scores)
        step += 1


def _candidates(scores: torch.Tensor, lprobs: torch.Tensor, k: int) -> _Candidates:
    """The 2K best of the W * V continuations of each sentence's hypotheses."""
    b, width = scores.shape  # (b, W)
    vocab = lprobs.size(-1)
    cand = (scores.unsqueeze(2) + lprobs.view(b, width, vocab)).view(b, -1)  # (b, W*V)
    cand_scores, cand_idx = cand.topk(min(2 * k, width * vocab), dim=1)  # (b, 2K)
    tokens = cand_idx % vocab  # (b, 2K)
    return _Candidates(cand_scores, cand_idx // vocab, tokens, tokens == EOS_ID)


def _harvest(cand: _Candidates, beam: _Beam, sents: _Sentences, step: int, d: Decoding,
             src_lens: list[int], finished: list[_Finished]) -> _Sentences:
    """Finish the candidates ending in EOS among each sentence's K best: append them to
    ``finished`` and count them. Their slots are refilled from the next best."""
    k = d.beam_size
    fin = cand.eos[:, :k] & torch.isfinite(cand.scores[:, :k])  # (b, K)
    fin_at = fin.nonzero()  # (F, 2)
    if not fin_at.numel():
        return sents
    fin_scores = cand.scores[:, :k] / length_penalty(step + 1, d.alpha)  # (b, K)
    i, j = fin_at.unbind(1)
    fin_rows = i * beam.width + cand.beam[i, j]  # (F,)
    fin_attn = None
    for s, score, toks, row in zip(sents.batch_index[i].tolist(), fin_scores[i, j].tolist(),
                                   beam.history[fin_rows].tolist(), fin_rows.tolist(),
                                   strict=True):
        if beam.attention is not None:
            fin_attn = beam.attention[row, :, : src_lens[s]].clone()  # (t+1, S_real)
        finished[s].append((score, toks, fin_attn))
    best = torch.cat([sents.best_finished, fin_scores.masked_fill(~fin, NEG_INF)], dim=1)
    return sents._replace(n_finished=sents.n_finished + fin.sum(1),
                          best_finished=best.topk(d.n_best).values)  # (b, n_best)


def _live(cand: _Candidates, width: int, k: int) -> _Live:
    """The K best candidates that do not end in EOS, and the beam rows they extend."""
    scores, pos = cand.scores.masked_fill(cand.eos, NEG_INF).topk(
        min(k, cand.scores.size(1)), dim=1)  # (b, K)
    sentence = torch.arange(scores.size(0), device=scores.device).unsqueeze(1)  # (b, 1)
    return _Live(scores, sentence * width + cand.beam.gather(1, pos), cand.tokens.gather(1, pos))


def _done(sents: _Sentences, live_scores: torch.Tensor, step: int, d: Decoding
          ) -> torch.Tensor:
    """(b,) bool: the sentences that rule 1, 2 or 3 of ``beam_search`` ends.

    At the length limit only EOS is allowed, so no live score is finite (rule 3).
    """
    # Rule 2 bound: extensions are at least one token longer, at most at the limit.
    reach = sents.max_lp.clamp(min=float(length_penalty(step + 2, d.alpha)))  # (b,)
    return ((sents.n_finished >= d.beam_size) | ~torch.isfinite(live_scores[:, 0])
            | (live_scores[:, 0] / reach < sents.best_finished[:, -1]))
