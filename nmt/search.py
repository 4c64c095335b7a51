"""Decoding: pure functions over the model's step interface (see nmt/model/seq2seq.py).

Every function takes a batch of sources (B, S) ending in EOS and their lengths,
and returns, per sentence, a list of ``Hypothesis`` (best first). A hypothesis'
tokens exclude BOS and the final EOS. The maximum output length of a sentence
is ``int(max_len_a * src_length + max_len_b)`` tokens, EOS included.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from nmt.data.tokenizer import BOS_ID, EOS_ID


class Hypothesis(NamedTuple):
    tokens: list[int]  # without BOS and the final EOS
    score: float  # summed log-probability (beam search: divided by the length penalty)
    attention: torch.Tensor | None = None  # (len(tokens) + 1, S_real) when requested


def max_lengths(src_lengths: torch.Tensor, max_len_a: float, max_len_b: int) -> torch.Tensor:
    """Maximum output length per sentence, EOS included (at least 1)."""
    return (src_lengths.float() * max_len_a + max_len_b).long().clamp(min=1)


def _check_lengths(max_len_a: float, max_len_b: int, min_len: int) -> None:
    if min_len < 0:
        raise ValueError(f"min_len must be >= 0, got {min_len}")
    if max_len_a < 0 or max_len_b < 0 or max_len_a == max_len_b == 0:
        raise ValueError(f"max_len_a and max_len_b must be >= 0 and not both 0, "
                         f"got {max_len_a} and {max_len_b}")


@torch.inference_mode()
def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor, max_len_a: float = 1.5,
                  max_len_b: int = 10, min_len: int = 0, return_attention: bool = False
                  ) -> list[list[Hypothesis]]:
    """Pick the most probable token at every step."""
    return _step_search(model, src, src_lengths, max_len_a, max_len_b, min_len,
                        return_attention, pick=lambda lp: lp.argmax(-1))


@torch.inference_mode()
def sample(model, src: torch.Tensor, src_lengths: torch.Tensor, temperature: float = 1.0,
           top_k: int = 0, max_len_a: float = 1.5, max_len_b: int = 10, min_len: int = 0,
           generator: torch.Generator | None = None, return_attention: bool = False
           ) -> list[list[Hypothesis]]:
    """Ancestral sampling from softmax(logits / temperature), optionally from the top k only.

    The score is the summed log-probability under the model (temperature 1, all tokens).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no limit), got {top_k}")

    def pick(lprobs: torch.Tensor) -> torch.Tensor:
        scores = lprobs / temperature  # (B, V)
        if top_k:
            kth = scores.topk(min(top_k, scores.size(-1)), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = F.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _step_search(model, src, src_lengths, max_len_a, max_len_b, min_len,
                        return_attention, pick)


def _step_search(model, src, src_lengths, max_len_a, max_len_b, min_len, return_attention,
                 pick) -> list[list[Hypothesis]]:
    """Greedy and sampling: one token per sentence per step; finished rows leave the batch."""
    _check_lengths(max_len_a, max_len_b, min_len)
    batch = src.size(0)
    enc = model.encode(src, src_lengths)
    state = model.init_state(enc)
    limits = max_lengths(src_lengths, max_len_a, max_len_b)  # (B,)
    rows = torch.arange(batch, device=src.device)  # original sentence of each live row
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    attns: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    step = 0
    while rows.numel():
        logits, state, attn = model.step(prev, state, enc)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # (b, V)
        if step < min_len:
            lprobs[:, EOS_ID] = float("-inf")
        last = step + 1 >= limits[rows]  # the length limit forces EOS
        lprobs[last] = torch.where(
            torch.arange(lprobs.size(1), device=lprobs.device) == EOS_ID, 0.0, float("-inf"))
        choice = pick(lprobs)  # (b,)
        chosen_lp = lprobs.gather(1, choice.unsqueeze(1)).squeeze(1)
        done = choice == EOS_ID
        for r, tok, lp, fin in zip(rows.tolist(), choice.tolist(), chosen_lp.tolist(),
                                   done.tolist(), strict=True):
            scores[r] += lp
            if not fin:
                tokens[r].append(tok)
        if return_attention and attn is not None:
            for j, r in enumerate(rows.tolist()):
                attns[r].append(attn[j, : int(src_lengths[r])].float().cpu())
        step += 1
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() < rows.numel():
            rows, prev = rows[keep], choice[keep]
            enc = model.reorder_encoder(enc, keep)
            state = model.reorder_state(state, keep)
        else:
            prev = choice
    return [[Hypothesis(tokens[i], scores[i],
                        torch.stack(attns[i]) if return_attention and attns[i] else None)]
            for i in range(batch)]


def length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha; length counts EOS."""
    return ((5 + length) / 6) ** alpha


@torch.inference_mode()
def beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor, beam_size: int = 5,
                alpha: float = 0.6, max_len_a: float = 1.5, max_len_b: int = 10,
                min_len: int = 0, n_best: int = 1, return_attention: bool = False
                ) -> list[list[Hypothesis]]:
    """Batched beam search; the ``n_best`` best hypotheses of each sentence, best first.

    Rows are batch x beam flattened: (B * K). Each step takes the 2K best
    continuations of a sentence; those ending in EOS among the first K are
    finished (scored by log-probability / length_penalty), and the best K others
    go on. A sentence is done when it has K finished hypotheses (a hypothesis
    reaching the maximum length is finished there), and leaves the batch.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    _check_lengths(max_len_a, max_len_b, min_len)
    k = beam_size
    batch, device = src.size(0), src.device
    enc = model.encode(src, src_lengths)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,)
    enc = model.reorder_encoder(enc, expand)
    state = model.init_state(enc)
    limits = max_lengths(src_lengths, max_len_a, max_len_b)  # (B,) by original sentence
    sents = torch.arange(batch, device=device)  # original sentence of each live sentence
    # Only the first beam of each sentence is alive at the start: the others are copies.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.full((batch * k, 0), BOS_ID, dtype=torch.long, device=device)
    attn_history: torch.Tensor | None = None
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    step = 0
    while sents.numel():
        b = sents.numel()
        logits, state, attn = model.step(prev, state, enc)
        lprobs = F.log_softmax(logits.float(), dim=-1)  # (b*K, V)
        vocab = lprobs.size(-1)
        if step < min_len:
            lprobs[:, EOS_ID] = float("-inf")
        at_limit = (step + 1 >= limits[sents]).repeat_interleave(k)  # (b*K,)
        if at_limit.any():
            forced = torch.full((vocab,), float("-inf"), device=device)
            forced[EOS_ID] = 0.0
            lprobs[at_limit] = forced
        if return_attention and attn is not None:
            a = attn.float().unsqueeze(1)  # (b*K, 1, S)
            attn_history = a if attn_history is None else torch.cat([attn_history, a], dim=1)
        cand = (scores.unsqueeze(-1) + lprobs.view(b, k, vocab)).view(b, k * vocab)
        cand_scores, cand_idx = cand.topk(2 * k, dim=1)  # (b, 2K)
        cand_beam = torch.div(cand_idx, vocab, rounding_mode="floor")
        cand_tok = cand_idx % vocab
        is_eos = cand_tok == EOS_ID

        # Finish EOS candidates among the first K of each sentence.
        fin = is_eos[:, :k] & torch.isfinite(cand_scores[:, :k])
        for i, j in fin.nonzero().tolist():
            row = i * k + int(cand_beam[i, j])
            s = int(sents[i])
            length = step + 1
            hyp_attn = None
            if attn_history is not None:
                hyp_attn = attn_history[row, :, : int(src_lengths[s])].cpu()
            finished[s].append(Hypothesis(
                history[row].tolist(),
                float(cand_scores[i, j]) / length_penalty(length, alpha), hyp_attn))

        # The best K non-EOS candidates go on.
        live_scores, pos = cand_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        beam = cand_beam.gather(1, pos)  # (b, K)
        tok = cand_tok.gather(1, pos)
        rows = (torch.arange(b, device=device).unsqueeze(1) * k + beam).view(-1)  # (b*K,)

        done = torch.tensor([len(finished[int(s)]) >= k for s in sents.tolist()],
                            dtype=torch.bool, device=device)
        done |= ~torch.isfinite(live_scores[:, 0])  # nothing left to extend
        keep = (~done).nonzero().squeeze(1)  # live sentences, in the current numbering
        keep_rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
        rows = rows.view(b, k)[keep].view(-1)
        sents, scores = sents[keep], live_scores[keep]
        history = torch.cat([history[rows], tok[keep].view(-1, 1)], dim=1)
        if attn_history is not None:
            attn_history = attn_history[rows]
        if rows.numel():
            state = model.reorder_state(state, rows)
            if keep_rows.numel() < enc.memory.size(0):
                enc = model.reorder_encoder(enc, keep_rows)
        prev = tok[keep].view(-1)
        step += 1
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]
