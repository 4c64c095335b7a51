"""Gradient flow through a model: what the loss's gradient looks like at each encoder state,
and at each layer's weights.

``state_gradients`` reruns a text encoder's recurrence one step at a time, with the fused
recurrence's own weights, so that every state h_t is a tensor of its own: the loss's
gradient with respect to it is then the total one, everything h_t feeds included (the
attention that reads it, the next steps of the recurrence, the bridge that reads the last
state). With ``attention=none`` and a one-directional encoder only the recurrence carries
the gradient back from the last state, and a tanh RNN's gradient shrinks with each step it
travels (the vanishing gradient); attention gives every state a direct path.

The fused recurrence (nn.RNN/GRU/LSTM, cuDNN or oneDNN) cannot show this: its outputs are
not the inputs of its next steps in autograd's graph, so their gradients are only the
attention's share. For an LSTM the state probed is h_t, the output (its cell c_t carries
gradient too).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.core.errors import ConfigError
from nmt.core.tokens import PAD_ID
from nmt.model.cells import get_cell
from nmt.model.encoder import RNNEncoder, sequence_mask
from nmt.model.seq2seq import Seq2Seq


def stepped_encoder(encoder: RNNEncoder, src: torch.Tensor, src_lengths: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, Any, list[list[torch.Tensor]]]:
    """The encoder's forward (memory, mask, final), in eval mode, computed one step at a
    time; also the top layer's states, [direction][position] -> (B, H), each its own node
    of the graph (``state_gradients`` asks autograd for theirs). Each step is the cell's
    registered one-step kernel (nmt/model/cells.py) with the recurrence's own weights.

    Past a sequence's end a state is carried unchanged, so the forward direction's last
    state is that of the last real token, and the backward direction starts there from
    zeros, as packed sequences do. Padded positions of the memory are zero.
    """
    rnn, cell = encoder.rnn, get_cell(encoder.cell)
    kernel, paired = cell.kernel, cell.paired
    if not isinstance(rnn, nn.RNNBase) or kernel is None:
        raise ConfigError(f"gradient flow: cell {encoder.cell!r} has no one-step kernel over "
                          f"nn.RNN-style weights ({type(rnn).__name__})")
    mask = sequence_mask(src_lengths, src.size(1))  # (B, S)
    x = list(encoder.embed(src).unbind(1))  # S x (B, E)
    finals: list[list[torch.Tensor]] = [[], []]  # per part (h, c): per direction (B, H)
    states: list[list[torch.Tensor]] = []
    for layer in range(rnn.num_layers):
        outputs = []
        for direction in range(encoder.num_directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            weights = [getattr(rnn, f"{name}{suffix}", None)
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            zeros = x[0].new_zeros(x[0].size(0), rnn.hidden_size)
            state: Any = (zeros, zeros) if paired else zeros
            steps = range(len(x) - 1, -1, -1) if direction else range(len(x))
            out: list[torch.Tensor] = [zeros] * len(x)
            for t in steps:
                new = kernel(x[t], state, *weights)
                keep = mask[:, t:t + 1]  # (B, 1)
                state = (tuple(torch.where(keep, n, o) for n, o in zip(new, state, strict=True))
                         if paired else torch.where(keep, new, state))
                out[t] = state[0] if paired else state
            outputs.append(out)
            if layer == rnn.num_layers - 1:
                for part, tensor in enumerate(state if paired else (state,)):
                    finals[part].append(tensor)
        states = outputs
        x = [torch.cat([o[t] for o in outputs], dim=1) for t in range(len(x))]
    memory = torch.stack(x, dim=1) * mask.unsqueeze(2)  # (B, S, H * D)
    top = [torch.cat(f, dim=1) for f in finals if f]  # (B, H * D) per part
    return memory, mask, (top[0], top[1]) if paired else top[0], states


def state_gradients(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor,
                    tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
    """(B, S, D) norms of the loss's gradient with respect to each top-layer encoder state
    h_t, per direction; zero at padded positions. The loss is the cross-entropy per target
    token (padding excluded, no label smoothing), the model in eval mode (no dropout)."""
    if not isinstance(model.encoder, RNNEncoder):
        raise ConfigError("gradient flow needs a recurrent text encoder (model.encoder=rnn), "
                          f"not {type(model.encoder).__name__}")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            memory, mask, final, states = stepped_encoder(model.encoder, src, src_lengths)
            logits, _ = model.teacher_forced(model.encoder_output(memory, mask, final), tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(),
                                   ignore_index=PAD_ID)
            flat = [h for direction in states for h in direction]
            # Only the states' gradients: the parameters' .grad (and DDP's hooks on them)
            # are left alone, so a training run can probe itself between steps.
            grads = torch.autograd.grad(loss, flat, allow_unused=True)
    finally:
        model.train(was_training)
    size = len(states[0])
    norms = torch.stack([torch.stack([_norm(g, h) for g, h in zip(
        grads[d * size:(d + 1) * size], flat[d * size:(d + 1) * size], strict=True)], dim=1)
        for d in range(len(states))], dim=2)  # (B, S, D)
    return norms * mask.unsqueeze(2)


def _norm(grad: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
    """(B,) norms of a state's gradient; zero where the loss does not depend on it."""
    return torch.zeros_like(state[:, 0]) if grad is None else grad.norm(dim=1)


# -- per layer ---------------------------------------------------------------------------

_RNN_WEIGHT = re.compile(r"\.(?:weight|bias)_(?:ih|hh)_l(\d+)(_reverse)?$")


def layer_name(parameter: str) -> str:
    """A parameter's layer: its module's name, and for a recurrence the layer (and direction)
    too: ``encoder.rnn.weight_hh_l1_reverse`` -> ``encoder.rnn.l1_reverse``."""
    match = _RNN_WEIGHT.search(parameter)
    if match:
        return f"{parameter[:match.start()]}.l{match.group(1)}{match.group(2) or ''}"
    return parameter.rsplit(".", 1)[0]


def layer_gradient_norms(model: nn.Module) -> dict[str, float]:
    """The norm of the gradients of each layer's parameters (``layer_name``), in the model's
    order; layers with no gradient yet are left out."""
    squares: dict[str, torch.Tensor] = {}
    for name, parameter in _named_gradients(model):
        layer = layer_name(name)
        assert parameter.grad is not None
        square = parameter.grad.detach().float().pow(2).sum()
        squares[layer] = squares[layer] + square if layer in squares else square
    return {layer: float(square.sqrt()) for layer, square in squares.items()}


def _named_gradients(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, parameter in model.named_parameters():  # tied weights once
        if parameter.grad is not None:
            yield name, parameter
