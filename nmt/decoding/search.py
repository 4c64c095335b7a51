"""Decoding: greedy search and ancestral sampling, as pure functions, and what they share
with batched beam search (nmt/decoding/beam.py); and the scores of given targets
(``score_targets``).

They drive any model with the step interface ``SearchModel`` below (nmt.model.Seq2Seq
has it; so could an ensemble or an exported model), one target position per call, rows
selected with ``reorder_*``. Their options come as a ``Decoding`` (nmt.decoding), which
checked them when it was made: nothing here checks them again.

Conventions shared by all three:

- Sources (B, S) end in EOS and are right-padded; ``src_lengths`` count the EOS.
  Decoding starts from BOS.
- Each sentence gets a list of ``Hypothesis``, best first. ``tokens`` exclude BOS and
  the final EOS, which every hypothesis has (possibly forced, see below).
- Length limit: the output of a sentence has at most ``int(max_len_a * src_length +
  max_len_b)`` tokens *EOS included* (at least 1), and at most ``max_len`` when that is
  set, so ``len(tokens) <= limit - 1``.
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
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, overload

import torch
import torch.nn.functional as F

from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID

if TYPE_CHECKING:  # nmt.decoding imports this module; search only reads the options
    from nmt.decoding.options import Decoding

NEG_INF = float("-inf")


class SearchModel(Protocol):
    """What search needs from a model; encoder outputs and states are opaque to it.

    Nothing else of the model is used, so anything with these five methods can be
    searched: an nn.Module or not, one network or several averaged.
    """

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


def max_lengths(src_lengths: torch.Tensor, max_len_a: float, max_len_b: int,
                max_len: int | None = None) -> torch.Tensor:
    """Most output tokens per sentence, EOS included: int(a * src_length + b), at least 1,
    at most ``max_len`` when given (it is >= 1)."""
    limits = (src_lengths.double() * max_len_a + max_len_b).long().clamp(min=1)  # (B,)
    return limits if max_len is None else limits.clamp(max=max_len)


@overload
def length_penalty(length: int, alpha: float) -> float: ...
@overload
def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor: ...
def length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha; ``length`` counts the EOS."""
    return ((5 + length) / 6) ** alpha


def constrain(lprobs: torch.Tensor, step: int, min_len: int,
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
        assert eos is not None  # cloned above whenever at_limit is given
        lprobs.masked_fill_(at_limit.unsqueeze(1), NEG_INF)
        lprobs[:, EOS_ID] = torch.where(at_limit, eos, lprobs[:, EOS_ID])


# -- greedy search and sampling ------------------------------------------------------------


def greedy_search(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
                  decoding: Decoding, return_attention: bool = False
                  ) -> list[list[Hypothesis]]:
    """The most probable token at every step; one hypothesis per sentence.

    Of ``decoding`` only the length options count.
    """
    return _decode_stepwise(model, src, src_lengths, decoding, return_attention,
                            choose=lambda lprobs: lprobs.argmax(dim=-1))


def sample(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
           decoding: Decoding, generator: torch.Generator | None = None,
           return_attention: bool = False) -> list[list[Hypothesis]]:
    """Ancestral sampling from softmax(log-probs / temperature), from the ``top_k`` most
    probable tokens only when ``top_k`` > 0; one hypothesis per sentence.

    ``generator`` (on the model's device) makes draws reproducible. The score is the
    summed log-probability under the model itself (temperature 1, every token).
    """
    temperature, top_k = decoding.temperature, decoding.top_k

    def choose(lprobs: torch.Tensor) -> torch.Tensor:
        scores = lprobs / temperature  # (b, V)
        if 0 < top_k < scores.size(-1):
            kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (b, 1)
            scores = scores.masked_fill(scores < kth, NEG_INF)
        probs = F.softmax(scores, dim=-1)  # (b, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (b,)

    return _decode_stepwise(model, src, src_lengths, decoding, return_attention, choose=choose)


def _decode_stepwise(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
                     d: Decoding, return_attention: bool,
                     choose: Callable[[torch.Tensor], torch.Tensor]
                     ) -> list[list[Hypothesis]]:
    """One token per sentence per step, picked by ``choose`` from (b, V) log-probs."""
    batch, device = src.size(0), src.device
    if batch == 0:
        return []
    with torch.inference_mode():
        limits = max_lengths(src_lengths.to(device), d.max_len_a, d.max_len_b, d.max_len)  # (B,)
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
            constrain(lprobs, step, d.min_len, at_limit)
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


# -- scoring given targets -----------------------------------------------------------------


def score_targets(model: SearchModel, src: torch.Tensor, src_lengths: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probabilities of given targets (B, T): ids ending in EOS,
    right-padded with PAD. Summed as the searches sum them (the model's log_softmax at
    every position, EOS included, in order), so for a search's own output this is the
    score it reported before any length penalty."""
    batch, device = src.size(0), src.device
    with torch.inference_mode():
        enc = model.encode(src, src_lengths)
        state = model.init_state(enc)
        prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # (B,)
        total = torch.zeros(batch, device=device)  # (B,)
        for t in range(targets.size(1)):
            logits, state, _ = model.step(prev, state, enc)  # (B, V)
            lprobs = F.log_softmax(logits.float(), dim=-1)  # (B, V)
            tokens = targets[:, t]  # (B,)
            picked = lprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)  # (B,)
            total += picked.masked_fill(tokens == PAD_ID, 0.0)
            prev = tokens
    return total.clone()
