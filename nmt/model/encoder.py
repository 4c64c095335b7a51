"""The recurrent encoder: embeddings in, one state per source position out."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

RNNS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # (L, B, H), or (h, c) for LSTM


def build_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
              bidirectional: bool = False) -> nn.RNNBase:
    """nn.RNN (tanh), nn.GRU or nn.LSTM, batch-first, dropout between layers."""
    if cell not in RNNS:
        raise ValueError(f"unknown cell {cell!r}; valid choices: {', '.join(RNNS)}")
    return RNNS[cell](input_size, hidden_size, num_layers, batch_first=True,
                      bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor | PackedSequence, state: State | None = None
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
        if isinstance(state, tuple):
            state = tuple(s.float() for s in state)
        elif state is not None:
            state = state.float()
        return rnn(x, state)


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True at real positions. The one place masks
    are built."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class RNNEncoder(nn.Module):
    """A (bidirectional, multi-layer) RNN over packed sequences."""

    def __init__(self, cell: str, emb_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.cell = cell
        self.rnn = build_rnn(cell, emb_size, hidden_size, num_layers, dropout, bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions

    def forward(self, emb: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, State]:
        """(B, S, E) embeddings, (B,) lengths -> (B, S, H * directions) outputs, final state.

        Padded positions of the outputs are zero; the final state is that of each
        sequence's last real token (packing takes care of it).
        """
        packed = pack_padded_sequence(self.dropout(emb), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        outputs, final = run_rnn(self.rnn, packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=emb.size(1))
        return self.dropout(outputs), final  # (B, S, H*D), (L*D, B, H)
