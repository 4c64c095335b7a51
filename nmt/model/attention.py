"""Attention over encoder states: additive (Bahdanau) and multiplicative (Luong).

Every attention is stateless: ``project_keys`` runs once per batch on the encoder
outputs, and ``forward`` scores one decoder step (query (B, Q)) or all steps at
once (query (B, T, Q)). Padded source positions are always masked out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model.deferred import linear


class Attention(nn.Module):
    """Base: subclasses define ``project_keys`` and ``score``."""

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, S, M) encoder states -> (B, S, K) keys; run once per batch, not per step."""
        return memory

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, T, Q) queries x (B, S, K) keys -> (B, T, S) scores."""
        raise NotImplementedError

    def forward(self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context vectors and attention weights; ``mask`` (B, S) is True at real tokens."""
        single = query.dim() == 2
        q = query.unsqueeze(1) if single else query  # (B, T, Q)
        scores = self.score(q, keys)  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = F.softmax(scores, dim=-1)  # (B, T, S)
        context = torch.bmm(weights, memory)  # (B, T, M)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights


class AdditiveAttention(Attention):
    """Bahdanau et al. (2015): v^T tanh(W_q q + W_k k + b)."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)
        self.key_proj = nn.Linear(memory_size, attention_size, bias=True)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (B, S, A)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = linear(query, self.query_proj)  # (B, T, A); per step: gradient deferred
        energy = torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, A)
        if torch.is_grad_enabled():  # exports trace v itself (int8 quantizes its weight)
            return _VectorScore.apply(energy, self.v.weight)
        return self.v(energy).squeeze(-1)  # (B, T, S)


class _VectorScore(torch.autograd.Function):
    """v(energy).squeeze(-1) for a (1, A) weight v: the forward as nn.Linear computes it,
    the backward without autograd's (rows x 1) @ (1 x A) matmul for the energy's
    gradient, an outer product that CPU matmul kernels run at under 1 GFLOP/s (about
    3% of a training step of the default model): a broadcast multiplication instead."""

    @staticmethod
    def forward(ctx: Any, energy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(energy, weight)
        return F.linear(energy, weight).squeeze(-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        energy, weight = ctx.saved_tensors
        energy_grad = weight_grad = None
        if ctx.needs_input_grad[0]:
            energy_grad = grad.unsqueeze(-1) * weight.squeeze(0)
        if ctx.needs_input_grad[1]:
            weight_grad = grad.reshape(1, -1).mm(energy.reshape(-1, energy.size(-1)))
        return energy_grad, weight_grad


class ConcatAttention(AdditiveAttention):
    """Luong et al. (2015) "concat": v^T tanh(W [q; k]), i.e. additive without a bias."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__(query_size, memory_size, attention_size)
        self.key_proj = nn.Linear(memory_size, attention_size, bias=False)


class DotAttention(Attention):
    """Luong "dot": q . k (query and memory sizes must match)."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        if query_size != memory_size:
            raise ValueError(
                f"luong_dot attention needs decoder_hidden ({query_size}) equal to the encoder "
                f"output size ({memory_size}); use luong_general or change the sizes"
            )

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)


class GeneralAttention(Attention):
    """Luong "general": q^T W k; W k is computed once per batch as the keys."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (B, S, Q)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)


ATTENTIONS: dict[str, type[Attention]] = {}


def register_attention(name: str, cls: type[Attention]) -> None:
    """Make ``name`` a valid ``model.attention``. ``cls(query_size, memory_size,
    attention_size)`` builds it; names are never silently replaced."""
    if name in ATTENTIONS or name == "none":
        raise ValueError(f"attention {name!r} is already registered")
    ATTENTIONS[name] = cls


register_attention("bahdanau", AdditiveAttention)
register_attention("luong_dot", DotAttention)
register_attention("luong_general", GeneralAttention)
register_attention("luong_concat", ConcatAttention)


def attention_choices() -> tuple[str, ...]:
    """Every valid ``model.attention``, registered ones included; "none": no attention."""
    return (*ATTENTIONS, "none")


def build_attention(name: str, query_size: int, memory_size: int, attention_size: int
                    ) -> Attention | None:
    """The attention called ``name``; None for "none"."""
    if name == "none":
        return None
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; valid choices: "
                         f"{', '.join(attention_choices())}")
    return ATTENTIONS[name](query_size, memory_size, attention_size)
