"""Recurrent cells: the registry encoders and decoders build their recurrences from.

A cell is the multi-layer recurrence to build (nn.RNN's constructor and calling
convention, PackedSequence inputs included) plus what the decoder needs to run it
one step at a time. A new cell type is one ``register_cell`` call:

    register_cell("relu", functools.partial(nn.RNN, nonlinearity="relu"), torch.rnn_relu_cell)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from nmt.model.layer_norm import LayerNormLSTM

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, B, H), or (h, c) for LSTM


@dataclass(frozen=True)
class Cell:
    """A registered cell type.

    ``rnn(input_size, hidden_size, num_layers, batch_first=True, bidirectional=...,
    dropout=...)`` builds the recurrence. ``kernel(x, state, w_ih, w_hh, b_ih, b_hh)``
    runs one layer for one step with that recurrence's weights (``torch.gru_cell``
    and friends); without one the decoder calls the recurrence on a length-1
    sequence, which is correct but slower. ``paired``: the state is an (h, c) pair.
    ``gates(gi, gh, state)``, optional, is the kernel after its two linear maps (gi =
    x W_ih^T + b_ih, gh = h W_hh^T + b_hh) -> the new state: with it the decoder's
    training loop computes those maps itself (nmt/model/deferred.py).
    """

    rnn: Callable[..., nn.Module]
    kernel: Callable[..., Any] | None = None
    paired: bool = False
    gates: Callable[..., Any] | None = None


CELLS: dict[str, Cell] = {}


def register_cell(name: str, rnn: Callable[..., nn.Module],
                  kernel: Callable[..., Any] | None = None, paired: bool = False,
                  gates: Callable[..., Any] | None = None) -> None:
    """Make ``name`` a valid ``model.cell``; names are never silently replaced."""
    if name in CELLS:
        raise ValueError(f"cell {name!r} is already registered")
    CELLS[name] = Cell(rnn, kernel, paired, gates)


# The kernels' arithmetic after their linear maps, as ATen's cells do it (RNNCell.cpp).
def _tanh_gates(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.tanh(gh + gi)


def _gru_gates(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    # In place on gh's chunks, as ATen: the gates' kernels then see the same strided
    # inputs, and give the same bits, as torch.gru_cell's.
    i_r, i_z, i_n = gi.unsafe_chunk(3, 1)
    h_r, h_z, h_n = gh.unsafe_chunk(3, 1)
    reset = h_r.add_(i_r).sigmoid_()
    update = h_z.add_(i_z).sigmoid_()
    new = i_n.add(h_n.mul_(reset)).tanh_()
    return (h - new).mul_(update).add_(new)


def _lstm_gates(gi: torch.Tensor, gh: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = (gh + gi).chunk(4, 1)
    c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


register_cell("rnn", nn.RNN, torch.rnn_tanh_cell, gates=_tanh_gates)
register_cell("gru", nn.GRU, torch.gru_cell, gates=_gru_gates)
register_cell("lstm", nn.LSTM, torch.lstm_cell, paired=True, gates=_lstm_gates)
register_cell("ln_lstm", LayerNormLSTM, paired=True)  # no fused kernel: a step loop
FORGET_GATE_CELLS = ("lstm", "ln_lstm")  # gates (i, f, g, o), biases named bias_ih*


def get_cell(name: str) -> Cell:
    """The cell called ``name``, or a ValueError listing the valid ones."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; valid choices: {', '.join(CELLS)}")
    return CELLS[name]


def check_forget_bias(value: Any, cell: str) -> None:
    """A ValueError unless ``value`` is None or a number and the cell has a forget gate."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"forget_bias must be a number or null, got {value!r}")
    if cell not in FORGET_GATE_CELLS:
        raise ValueError(f"forget_bias is the LSTM's forget-gate bias; cell={cell} has none "
                         f"(use cell={' or '.join(FORGET_GATE_CELLS)}, or forget_bias=null)")


def set_forget_bias(module: nn.Module, value: float) -> None:
    """Every LSTM (nn.LSTM, LayerNormLSTM) in ``module`` starts with forget-gate bias
    ``value`` (b_ih's forget rows ``value``, b_hh's zero; Gers et al. (2000), Jozefowicz
    et al. (2015)): with 1 the cell keeps ~73% of its memory a step at first instead of
    ~50%, and gradients reach further back. No random draw: the rest of the weights are
    unchanged."""
    for lstm in (m for m in module.modules() if isinstance(m, nn.LSTM | LayerNormLSTM)):
        rows = slice(lstm.hidden_size, 2 * lstm.hidden_size)  # gates (i, f, g, o)
        with torch.no_grad():
            for name, param in lstm.named_parameters():
                if name.startswith("bias_ih"):
                    param[rows] = value
                elif name.startswith("bias_hh"):
                    param[rows] = 0.0


def build_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
              bidirectional: bool = False) -> nn.Module:
    """The registered recurrence (nn.RNN (tanh), nn.GRU, nn.LSTM, ...), batch-first,
    dropout between layers."""
    return get_cell(cell).rnn(input_size, hidden_size, num_layers, batch_first=True,
                              bidirectional=bidirectional,
                              dropout=dropout if num_layers > 1 else 0.0)


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """``fn`` applied to the state's tensor, or to each tensor of an (h, c) pair."""
    if isinstance(state, tuple):
        h, c = state
        return fn(h), fn(c)
    return fn(state)


@overload
def run_rnn(rnn: nn.Module, x: torch.Tensor, state: State | None = None
            ) -> tuple[torch.Tensor, State]: ...
@overload
def run_rnn(rnn: nn.Module, x: PackedSequence, state: State | None = None
            ) -> tuple[PackedSequence, State]: ...
def run_rnn(rnn: nn.Module, x: torch.Tensor | PackedSequence, state: State | None = None
            ) -> tuple[torch.Tensor | PackedSequence, State]:
    """Call an nn.RNN/GRU/LSTM; under CPU autocast, in float32.

    oneDNN's bf16 recurrences need bf16 hardware (they fail on e.g. AVX2-only CPUs),
    and recurrences are where reduced precision hurts most; the matmuls around
    them still run in bf16.
    """
    if not torch.is_autocast_enabled("cpu"):
        return rnn(x, state)
    with torch.autocast("cpu", enabled=False):
        # x is a tensor or a PackedSequence
        x = x.float() if isinstance(x, torch.Tensor) else x._replace(data=x.data.float())
        if state is not None:
            state = map_state(torch.Tensor.float, state)
        return rnn(x, state)
