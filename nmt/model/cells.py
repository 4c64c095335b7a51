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

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, B, H), or (h, c) for LSTM


@dataclass(frozen=True)
class Cell:
    """A registered cell type.

    ``rnn(input_size, hidden_size, num_layers, batch_first=True, bidirectional=...,
    dropout=...)`` builds the recurrence. ``kernel(x, state, w_ih, w_hh, b_ih, b_hh)``
    runs one layer for one step with that recurrence's weights (``torch.gru_cell``
    and friends); without one the decoder calls the recurrence on a length-1
    sequence, which is correct but slower. ``paired``: the state is an (h, c) pair.
    """

    rnn: Callable[..., nn.Module]
    kernel: Callable[..., Any] | None = None
    paired: bool = False


CELLS: dict[str, Cell] = {}


def register_cell(name: str, rnn: Callable[..., nn.Module],
                  kernel: Callable[..., Any] | None = None, paired: bool = False) -> None:
    """Make ``name`` a valid ``model.cell``; names are never silently replaced."""
    if name in CELLS:
        raise ValueError(f"cell {name!r} is already registered")
    CELLS[name] = Cell(rnn, kernel, paired)


register_cell("rnn", nn.RNN, torch.rnn_tanh_cell)
register_cell("gru", nn.GRU, torch.gru_cell)
register_cell("lstm", nn.LSTM, torch.lstm_cell, paired=True)


def get_cell(name: str) -> Cell:
    """The cell called ``name``, or a ValueError listing the valid ones."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; valid choices: {', '.join(CELLS)}")
    return CELLS[name]


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
