"""Decoding: greedy search, batched beam search and ancestral sampling, as pure functions.

They drive any model with the step interface ``SearchModel`` below (nmt.model.Seq2Seq
has it), one target position per call, rows selected with ``reorder_*``.

Conventions shared by all three:

- Sources (B, S) end in EOS and are right-padded; ``src_lengths`` count the EOS.
  Decoding starts from BOS.
- Each sentence gets a list of ``Hypothesis``, best first. ``tokens`` exclude BOS and
  the final EOS, which every hypothesis has (possibly forced, see below).
- Length limit: the output of a sentence has at most ``int(max_len_a * src_length +
  max_len_b)`` tokens *EOS included* (at least 1), so ``len(tokens) <= limit - 1``.
  Lengths count EOS on both sides, as ``src_lengths`` do. At the limit EOS is forced.
- ``min_len``: EOS is forbidden until ``len(tokens) >= min_len``; the length limit wins.
- PAD and BOS are never generated: they are not target tokens, though a model trained
  with label smoothing gives them a little probability.
- Scores are sums of the model's log-probabilities (temperature 1, full vocabulary) over
  the tokens and the EOS, a forced EOS included; beam search divides them by
  ``length_penalty``.
- Sentences that are done leave the batch (``reorder_*`` drops their rows); the loop
  stops when none is left.

They run under ``torch.inference_mode``; the caller puts the model in eval mode.
Returned tensors (attention) are ordinary tensors, usable outside inference mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

NEG_INF = float("-inf")


class SearchModel(Protocol):
    """What search needs from a model; encoder outputs and states are opaque to it."""

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Any:
        """(B, S), (B,) -> encoder output (memory (B, S, M), keys, mask (B, S), final)."""

    def init_state(self, enc: Any) -> Any:
        """The decoder state before the first step."""

    def step(self, prev_tokens: torch.Tensor, state: Any, enc: Any
             ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """(B,) previous tokens -> logits (B, V), new state, attention (B, S) or None."""

    def reorder_encoder(self, enc: Any, index: torch.Tensor) -> Any:
        """Rows ``index`` (K,) of the encoder output, in that order (repeats allowed)."""

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        """Rows ``index`` (K,) of the decoder state."""


class Hypothesis(NamedTuple):
    tokens: list[int]  # without BOS and without the final EOS
    score: float  # beam search: summed log-prob / length_penalty; greedy, sampling: summed
    attention: torch.Tensor | None = None  # (len(tokens) + 1, S_real) when asked for


def max_lengths(src_lengths: torch.Tensor, max_len_a: float, max_len_b: int) -> torch.Tensor:
    """Most output tokens per sentence, EOS included: int(a * src_length + b), at least 1."""
    return (src_lengths.double() * max_len_a + max_len_b).long().clamp(min=1)  # (B,)


def length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha; ``length`` counts the EOS."""
    return ((5 + length) / 6) ** alpha


def _check_lengths(max_len_a: float, max_len_b: int, min_len: int) -> None:
    if min_len < 0:
        raise ValueError(f"min_len must be >= 0, got {min_len}")
    if max_len_a < 0 or max_len_b < 0 or max_len_a == max_len_b == 0:
        raise ValueError(f"max_len_a and max_len_b must be >= 0 and not both 0 (the limit "
                         f"counts the EOS), got {max_len_a} and {max_len_b}")


def _constrain(lprobs: torch.Tensor, step: int, min_len: int,
               at_limit: torch.Tensor | None) -> None:
    """In place on (N, V) log-probs for output position ``step``: the rules above.

    ``at_limit`` (N,) marks rows whose next token must be EOS (None: no row).
    """
    lprobs[:, PAD_ID] = NEG_INF
    lprobs[:, BOS_ID] = NEG_INF
    eos = lprobs[:, EOS_ID].clone() if at_limit is not None else None  # (N,)
    if step < min_len:
        lprobs[:, EOS_ID] = NEG_INF
    if at_limit is not None:
        lprobs.masked_fill_(at_limit.unsqueeze(1), NEG_INF)
        lprobs[:, EOS_ID] = torch.where(at_limit, eos, lprobs[:, EOS_ID])


# -- greedy search and sampling ------------------------------------------------------------


def greedy_search(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
                  max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0,
                  return_attention: bool = False) -> list[list[Hypothesis]]:
    """The most probable token at every step; one hypothesis per sentence."""
    _check_lengths(max_len_a, max_len_b, min_len)
    return _decode_stepwise(model, src, src_lengths, max_len_a=max_len_a, max_len_b=max_len_b,
                            min_len=min_len, return_attention=return_attention,
                            choose=lambda lprobs: lprobs.argmax(dim=-1))


def sample(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
           temperature: float = 1.0, top_k: int = 0, max_len_a: float = 1.5,
           max_len_b: int = 10, min_len: int = 0, generator: torch.Generator | None = None,
           return_attention: bool = False) -> list[list[Hypothesis]]:
    """Ancestral sampling from softmax(log-probs / temperature), from the ``top_k`` most
    probable tokens only when ``top_k`` > 0; one hypothesis per sentence.

    ``generator`` (on the model's device) makes draws reproducible. The score is the
    summed log-probability under the model itself (temperature 1, every token).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: the full distribution), got {top_k}")
    _check_lengths(max_len_a, max_len_b, min_len)

    def choose(lprobs: torch.Tensor) -> torch.Tensor:
        scores = lprobs / temperature  # (b, V)
        if 0 < top_k < scores.size(-1):
            kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (b, 1)
            scores = scores.masked_fill(scores < kth, NEG_INF)
        probs = F.softmax(scores, dim=-1)  # (b, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (b,)

    return _decode_stepwise(model, src, src_lengths, max_len_a=max_len_a, max_len_b=max_len_b,
                            min_len=min_len, return_attention=return_attention, choose=choose)


def _decode_stepwise(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor, *,
                     max_len_a: float, max_len_b: int, min_len: int, return_attention: bool,
                     choose: Callable[[torch.Tensor], torch.Tensor]
                     ) -> list[list[Hypothesis]]:
    """One token per sentence per step, picked by ``choose`` from (b, V) log-probs."""
    batch, device = src.size(0), src.device
    if batch == 0:
        return []
    with torch.inference_mode():
        limits = max_lengths(src_lengths.to(device), max_len_a, max_len_b)  # (B,)
        steps = int(limits.max())
        enc = model.encode(src, src_lengths)
        state = model.init_state(enc)
        rows = torch.arange(batch, device=device)  # (b,) sentence of each live row
        row_limits = limits  # (b,)
        next_limit = int(row_limits.min())  # first step at which some row must end
        prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # (b,)
        out = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)  # (B, T)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) without EOS
        scores = torch.zeros(batch, device=device)  # (B,)
        attn_out = None  # (B, T, S)
        for step in range(steps):
            logits, state, attn = model.step(prev, state, enc)  # (b, V), state, (b, S)
            lprobs = F.log_softmax(logits.float(), dim=-1)  # (b, V)
            at_limit = row_limits <= step + 1 if step + 1 >= next_limit else None
            _constrain(lprobs, step, min_len, at_limit)
            choice = choose(lprobs)  # (b,)
            out[rows, step] = choice
            scores.index_add_(0, rows, lprobs.gather(1, choice.unsqueeze(1)).squeeze(1))
            if return_attention and attn is not None:
                if attn_out is None:
                    attn_out = torch.zeros(batch, steps, attn.size(-1), device=device)
                attn_out[rows, step] = attn.float()
            ended = choice == EOS_ID  # (b,)
            if not bool(ended.any()):
                prev = choice
                continue
            lengths[rows[ended]] = step
            keep = (~ended).nonzero().squeeze(1)  # (b',)
            if keep.numel() == 0:
                break
            rows, row_limits, prev = rows[keep], row_limits[keep], choice[keep]
            next_limit = int(row_limits.min())
            enc = model.reorder_encoder(enc, keep)
            state = model.reorder_state(state, keep)
        tokens, lengths_l, scores_l = out.tolist(), lengths.tolist(), scores.tolist()
    src_lens = src_lengths.tolist()
    hyps = []
    for i in range(batch):
        attention = None
        if attn_out is not None:  # clone: an ordinary tensor, not a view of the whole buffer
            attention = attn_out[i, : lengths_l[i] + 1, : src_lens[i]].clone()
        hyps.append([Hypothesis(tokens[i][: lengths_l[i]], scores_l[i], attention)])
    return hyps


# -- beam search ---------------------------------------------------------------------------


def beam_search(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
                beam_size: int = 5, alpha: float = 0.6, max_len_a: float = 1.5,
                max_len_b: int = 10, min_len: int = 0, n_best: int = 1,
                return_attention: bool = False) -> list[list[Hypothesis]]:
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
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    _check_lengths(max_len_a, max_len_b, min_len)
    batch = src.size(0)
    if batch == 0:
        return []
    with torch.inference_mode():
        finished = _beam(model, src, src_lengths, k=beam_size, alpha=alpha,
                         max_len_a=max_len_a, max_len_b=max_len_b, min_len=min_len,
                         n_best=n_best, return_attention=return_attention)
    results = []
    for hyps in finished:
        hyps.sort(key=lambda h: h[0], reverse=True)
        # clone outside inference mode: callers get ordinary tensors
        results.append([Hypothesis(tokens, score, None if attn is None else attn.clone())
                        for score, tokens, attn in hyps[:n_best]])
    return results


def _beam(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor, *, k: int, alpha: float,
          max_len_a: float, max_len_b: int, min_len: int, n_best: int, return_attention: bool
          ) -> list[list[tuple[float, list[int], torch.Tensor | None]]]:
    """The search itself: per sentence, its finished (score, tokens, attention), unsorted."""
    batch, device = src.size(0), src.device
    src_lens = src_lengths.tolist()
    finished: list[list[tuple[float, list[int], torch.Tensor | None]]] = [
        [] for _ in range(batch)]
    enc = model.encode(src, src_lengths)
    state = model.init_state(enc)

    # Per live sentence (b of them).
    sents = torch.arange(batch, device=device)  # (b,) index in the input batch
    limits = max_lengths(src_lengths.to(device), max_len_a, max_len_b)  # (b,)
    max_lp = length_penalty(limits.float(), alpha)  # (b,) penalty at the limit
    n_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (b,)
    best_finished = torch.full((batch, n_best), NEG_INF, device=device)  # (b, n_best) desc
    # Per live hypothesis: W of them per sentence, in rows (b * W). The first step runs
    # on one row per sentence (W = 1); its K best tokens then fill K rows (W = K).
    width = 1
    beam_scores = torch.zeros(batch, 1, device=device)  # (b, W) summed log-probs
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # (b*W,)
    history = torch.zeros((batch, 0), dtype=torch.long, device=device)  # (b*W, t)
    attn_history: torch.Tensor | None = None  # (b*W, t, S)
    next_limit = int(limits.min())

    step = 0
    while True:
        b = sents.numel()
        logits, state, attn = model.step(prev, state, enc)  # (b*W, V), state, (b*W, S)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # (b*W, V)
        vocab = lprobs.size(-1)
        at_limit = None
        if step + 1 >= next_limit:
            at_limit = (limits <= step + 1).repeat_interleave(width)  # (b*W,)
        _constrain(lprobs, step, min_len, at_limit)
        if return_attention and attn is not None:
            now = attn.float().unsqueeze(1)  # (b*W, 1, S)
            attn_history = now if attn_history is None else torch.cat([attn_history, now], 1)

        cand = (beam_scores.unsqueeze(2) + lprobs.view(b, width, vocab)).view(b, -1)
        cand_scores, cand_idx = cand.topk(min(2 * k, width * vocab), dim=1)  # (b, 2K)
        cand_beam = cand_idx // vocab  # (b, 2K)
        cand_tokens = cand_idx % vocab  # (b, 2K)
        cand_eos = cand_tokens == EOS_ID  # (b, 2K)

        # EOS among the K best: finished. Their slots are refilled from the next best.
        fin = cand_eos[:, :k] & torch.isfinite(cand_scores[:, :k])  # (b, K)
        fin_at = fin.nonzero()  # (F, 2)
        if fin_at.numel():
            fin_scores = cand_scores[:, :k] / length_penalty(step + 1, alpha)  # (b, K)
            i, j = fin_at.unbind(1)
            fin_rows = i * width + cand_beam[i, j]  # (F,)
            fin_attn = None
            for s, score, toks, row in zip(sents[i].tolist(), fin_scores[i, j].tolist(),
                                           history[fin_rows].tolist(), fin_rows.tolist(),
                                           strict=True):
                if attn_history is not None:
                    fin_attn = attn_history[row, :, : src_lens[s]].clone()  # (t+1, S_real)
                finished[s].append((score, toks, fin_attn))
            n_finished += fin.sum(1)
            best_finished = torch.cat(  # (b, n_best)
                [best_finished, fin_scores.masked_fill(~fin, NEG_INF)], dim=1).topk(n_best).values

        new_width = min(k, cand_scores.size(1))
        live_scores, pos = cand_scores.masked_fill(cand_eos, NEG_INF).topk(new_width, dim=1)
        # (b, K): the row each live continuation extends, and its new token
        origin = torch.arange(b, device=device).unsqueeze(1) * width + cand_beam.gather(1, pos)
        tokens = cand_tokens.gather(1, pos)

        # Rule 2 bound: extensions are at least one token longer, at most at the limit.
        reach = max_lp.clamp(min=float(length_penalty(step + 2, alpha)))  # (b,)
        done = ((n_finished >= k) | ~torch.isfinite(live_scores[:, 0])
                | (live_scores[:, 0] / reach < best_finished[:, -1]))  # (b,)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)  # (b',)
            if keep.numel() == 0:
                return finished
            sents, limits, max_lp = sents[keep], limits[keep], max_lp[keep]
            n_finished, best_finished = n_finished[keep], best_finished[keep]
            live_scores, origin, tokens = live_scores[keep], origin[keep], tokens[keep]
            next_limit = int(limits.min())
        elif new_width != width:
            keep = torch.arange(b, device=device)
        else:
            keep = None
        if keep is not None:  # every row of a sentence holds the same encoder output
            enc = model.reorder_encoder(enc, (keep * width).repeat_interleave(new_width))
        origin = origin.view(-1)  # (b'*K,)
        state = model.reorder_state(state, origin)
        history = torch.cat([history[origin], tokens.view(-1, 1)], dim=1)  # (b'*K, t+1)
        if attn_history is not None:
            attn_history = attn_history[origin]
        prev = tokens.view(-1)
        beam_scores, width = live_scores, new_width
        step += 1
