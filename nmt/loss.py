"""The training loss: label-smoothed cross-entropy, fused, with the NLL for the perplexity."""

from __future__ import annotations

from typing import Any

import torch

from nmt.data.tokenizer import PAD_ID
from nmt.errors import ConfigError


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy over (N, V) logits with a hand-written backward.

    Autograd through log_softmax, gather and mean writes several (N, V) buffers;
    here the forward needs one logsumexp and the backward one softmax, which is
    most of the saving when V is in the thousands (a profile showed about 10% of a
    training step in the loss otherwise).
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, real: torch.Tensor,
                smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        # ctx is typed Any as torch does: it also carries our own attribute, `smoothing`.
        # Shapes: logits (N, V), target (N,), real (N,) in logits' dtype (1 for a real token).
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        nll = (lse - logits.gather(1, target.unsqueeze(1)).squeeze(1)) * real
        uniform = (lse - logits.mean(dim=-1)) * real  # -mean_v log p_v
        loss = (1.0 - smoothing) * nll.sum() + smoothing * uniform.sum()
        ctx.save_for_backward(logits, lse, target, real)
        ctx.smoothing = smoothing
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)  # for perplexity only: backward() on it fails
        return loss, nll_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_nll: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None, None]:
        logits, lse, target, real = ctx.saved_tensors
        eps = ctx.smoothing
        grad = torch.softmax(logits, dim=1)  # (N, V); faster here than exp(logits - lse)
        if eps:
            grad -= eps / logits.size(1)
        grad.scatter_add_(1, target.unsqueeze(1),
                          torch.full_like(lse, -(1.0 - eps)).unsqueeze(1))
        grad *= (real.to(grad.dtype) * grad_loss).unsqueeze(1)
        return grad, None, None, None


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float,
                       pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss, summed NLL and the number of real target tokens.

    The same loss as nn.CrossEntropyLoss(label_smoothing=smoothing, ignore_index=pad_id,
    reduction="sum") (a test checks it), computed in one pass that also gives the NLL
    for the perplexity.
    """
    logits = logits.reshape(-1, logits.size(-1)).float()  # (N, V)
    target = target.reshape(-1)  # (N,)
    real = target != pad_id
    loss, nll = _SmoothedCrossEntropy.apply(logits, target, real.to(logits.dtype), smoothing)
    return loss, nll, real.sum()


def check_label_smoothing(smoothing: float) -> None:
    """Refuse a smoothing outside [0, 1): at 1 the targets would not count at all."""
    if not 0 <= smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {smoothing}")


def attention_coverage_penalty(attn: torch.Tensor, target: torch.Tensor,
                               pad_id: int = PAD_ID) -> torch.Tensor:
    """Xu et al. (2015)'s doubly stochastic regulariser, summed over the batch:
    sum_i (1 - sum_t alpha_ti)^2 for each caption, t over its real target steps.

    attn (B, T, S) attention weights, target (B, T) ids; the loss adds it times its
    weight (``loss.doubly_stochastic``), so that every region is attended about once.
    """
    real = (target != pad_id).unsqueeze(-1).to(attn.dtype)  # (B, T, 1)
    coverage = (attn * real).sum(dim=1)  # (B, S)
    return ((1.0 - coverage) ** 2).sum()
