"""Weight gradients of a step loop, computed once per loop instead of once per step.

The input-feeding decoder runs its recurrence, attention and attentional layer one
target position at a time in training, so autograd computes each weight's gradient
at every step: T small products (batch rows x input x output) accumulated into one
buffer. Inside ``deferred_weight_gradients()``, the linear maps of the step (``linear``
below, and the decoder's recurrent cell through ``loop_linears().linear``) save each
step's input and output gradient instead, and one product over all steps' rows gives
each weight's gradient when the backward pass has been through every step: the same
sums in another order (float rounding apart), at large-matrix speed. Input gradients
are still computed at every step, as they must be.

Outside such a block, or with gradients off, ``linear(x, layer)`` is ``layer(x)``.
Under autocast the block changes nothing (custom autograd functions would bypass its
casts): mixed precision keeps autograd's own per-step products.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

_ACTIVE: ContextVar[LoopLinears | None] = ContextVar("nmt_loop_linears", default=None)


class _Shared:
    """One weight of a loop: the rows its steps saved in the backward pass. (It holds
    no tensor of the graph: the graph's nodes hold it, and it is freed with them.)"""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []  # (rows, in) per step
        self.grads: list[torch.Tensor] = []  # (rows, out) per step


class _Collect(Function):
    """Forward: the weight itself. Backward: the weight's (and bias's) gradient from
    every step's saved rows, in one product, once all the steps have run."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bias: torch.Tensor | None,
                shared: _Shared) -> torch.Tensor:
        ctx.shared = shared
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple[Any, ...]:
        shared = ctx.shared
        if not shared.grads:  # no step reached the loss
            return grad, None, None
        rows = torch.cat(shared.grads)  # (N, out)
        weight_grad = rows.t().mm(torch.cat(shared.inputs))  # (out, in)
        if grad is not None:
            weight_grad = weight_grad + grad
        bias_grad = rows.sum(0) if ctx.needs_input_grad[1] else None
        shared.inputs.clear()
        shared.grads.clear()
        return weight_grad, bias_grad, None


class _StepLinear(Function):
    """x W^T + b for one step; the backward gives x's gradient and keeps the rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shared: _Shared) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.shared = shared
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        shared = ctx.shared
        shared.inputs.append(x.reshape(-1, x.size(-1)))
        shared.grads.append(grad.reshape(-1, grad.size(-1)))
        x_grad = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        return x_grad, None, None, None


class LoopLinears:
    """The shared weights of one loop: ``linear`` as F.linear, gradients deferred."""

    def __init__(self) -> None:
        # id(weight) -> (its rows, the weight as the steps read it, the bias detached)
        self._shared: dict[int, tuple[_Shared, torch.Tensor, torch.Tensor | None]] = {}

    def linear(self, x: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if not weight.requires_grad:
            return F.linear(x, weight, bias)
        entry = self._shared.get(id(weight))
        if entry is None:
            shared = _Shared()
            # The steps read the weight through this node: its backward runs after
            # theirs, and gives the weight's and the bias's gradients.
            entry = (shared, _Collect.apply(weight, bias, shared),
                     None if bias is None else bias.detach())
            self._shared[id(weight)] = entry
        shared, stand_in, fixed_bias = entry
        return _StepLinear.apply(x, stand_in, fixed_bias, shared)


@contextmanager
def deferred_weight_gradients(like: torch.Tensor) -> Iterator[LoopLinears | None]:
    """A loop's block: its linear maps defer their weight gradients (when gradients are
    on and autocast is off for ``like``'s device); yields the loop's LoopLinears or None."""
    on = torch.is_grad_enabled() and not torch.is_autocast_enabled(like.device.type)
    token = _ACTIVE.set(LoopLinears() if on else None)
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def loop_linears() -> LoopLinears | None:
    """The enclosing loop's LoopLinears, or None outside ``deferred_weight_gradients``."""
    return _ACTIVE.get()


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``, with the weight gradient deferred inside a loop's block."""
    loop = _ACTIVE.get()
    return layer(x) if loop is None else loop.linear(x, layer.weight, layer.bias)
