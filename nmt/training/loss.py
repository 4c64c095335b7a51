"""The training loss: label-smoothed cross-entropy, fused, with the NLL for the perplexity."""

from __future__ import annotations

from typing import Any

import torch

from nmt.core.errors import ConfigError
from nmt.core.tokens import PAD_ID


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy over (N, V) logits with a hand-written backward.

    Autograd through log_softmax, gather and mean writes several (N, V) buffers;
    here the forward makes one pass of exponentials, exp(logits - max), which gives
    the log-normaliser and, kept for the backward, the softmax after one division:
    the backward needs no second pass of exponentials (on a CPU, exp over the (N, V)
    logits is most of the loss's time). The kept buffer takes the place of the one the
    backward would allocate for the softmax, so peak memory does not grow.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, real: torch.Tensor,
                smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        # ctx is typed Any as torch does: it also carries our own attribute, `smoothing`.
        # Shapes: logits (N, V), target (N,), real (N,) in logits' dtype (1 for a real token).
        top = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        exps = (logits - top).exp_()  # (N, V), each row's largest is 1
        total = exps.sum(dim=-1)  # (N,) >= 1
        lse = total.log() + top.squeeze(1)  # (N,) log sum_v exp(logit_v)
        nll = (lse - logits.gather(1, target.unsqueeze(1)).squeeze(1)) * real
        uniform = (lse - logits.mean(dim=-1)) * real  # -mean_v log p_v
        loss = (1.0 - smoothing) * nll.sum() + smoothing * uniform.sum()
        ctx.save_for_backward(exps, total, target, real)
        ctx.smoothing = smoothing
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)  # for perplexity only: backward() on it fails
        return loss, nll_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_nll: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None, None]:
        exps, total, target, real = ctx.saved_tensors
        eps = ctx.smoothing
        # The softmax, in the forward's buffer: backward runs once (no retain_graph
        # use for a loss), and nothing else holds it.
        grad = exps.div_(total.unsqueeze(1))  # (N, V)
        if eps:
            grad -= eps / grad.size(1)
        grad.scatter_add_(1, target.unsqueeze(1),
                          torch.full_like(total, -(1.0 - eps)).unsqueeze(1))
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
