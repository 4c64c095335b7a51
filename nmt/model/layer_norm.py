"""A layer-normalized LSTM (Ba, Kiros & Hinton, 2016), registered as ``model.cell=ln_lstm``.

Each step normalizes the two linear maps of the gates separately and the cell state
before its tanh:

    gates = LN_x(W_ih x_t) + LN_h(W_hh h_{t-1}) + b      (i, f, g, o, as nn.LSTM's)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(LN_c(c_t))

which keeps every gate's input at a steady scale whatever the weights grow to. No
fused kernel does this, so the recurrence is a loop over time steps in Python (the
input map and its normalization run once for the whole sequence): slower per step
than cuDNN's or oneDNN's LSTM. ``LayerNormLSTM`` takes and returns what nn.LSTM
does (batch-first tensors or PackedSequences, (h, c) states of (layers * directions,
B, H)), so the encoder and the decoder use it unchanged; its parameters keep
nn.LSTM's names (``weight_ih_l0``, ``bias_ih_l0_reverse``, ...) plus the gains
``ln_*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

State = tuple[torch.Tensor, torch.Tensor]


class LayerNormLSTM(nn.Module):
    """nn.LSTM's interface (batch_first only) with layer normalization in every step."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 batch_first: bool = True, bidirectional: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not batch_first:
            raise ValueError("LayerNormLSTM is batch-first only")
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.num_directions = 2 if bidirectional else 1
        self.dropout = dropout
        gates = 4 * hidden_size
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes(layer):
                self.register_parameter("weight_ih" + suffix,
                                        nn.Parameter(torch.empty(gates, size)))
                self.register_parameter("weight_hh" + suffix,
                                        nn.Parameter(torch.empty(gates, hidden_size)))
                self.register_parameter("bias_ih" + suffix, nn.Parameter(torch.empty(gates)))
                self.add_module("ln_ih" + suffix, nn.LayerNorm(gates, bias=False))
                self.add_module("ln_hh" + suffix, nn.LayerNorm(gates, bias=False))
                self.add_module("ln_c" + suffix, nn.LayerNorm(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.LSTM's initialization
        for name, param in self.named_parameters():
            if name.startswith(("weight_", "bias_")):
                nn.init.uniform_(param, -bound, bound)

    def _suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][:self.num_directions]

    def forward(self, x: torch.Tensor | PackedSequence, state: State | None = None
                ) -> tuple[torch.Tensor | PackedSequence, State]:
        lengths = None
        if isinstance(x, PackedSequence):
            x, lengths = pad_packed_sequence(x, batch_first=True)
        batch = x.size(0)
        if state is None:
            zeros = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
            state = (zeros, zeros)
        mask = None if lengths is None else (
            torch.arange(x.size(1)).unsqueeze(0) < lengths.unsqueeze(1)).to(x.device)
        hs, cs = [], []
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * self.num_directions + d
                out, (h, c) = self._run(x, mask, (state[0][k], state[1][k]), suffix, d == 1)
                outputs.append(out)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if layer < self.num_layers - 1 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
        final = (torch.stack(hs), torch.stack(cs))
        if lengths is not None:
            return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), final
        return x, final

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None, state: State, suffix: str,
             reverse: bool) -> tuple[torch.Tensor, State]:
        """One layer, one direction over (B, T, I): outputs (B, T, H), final (h, c).
        Past a sequence's end (``mask`` False) the state is carried unchanged, so the
        final state is that of its last real step; a reversed direction reads each
        sequence from its own last real step back."""
        index = None
        if reverse:
            index = _reversal(x.size(0), x.size(1), mask, x.device)
            x = x.gather(1, index.unsqueeze(2).expand_as(x))
        ln_hh, ln_c = getattr(self, "ln_hh" + suffix), getattr(self, "ln_c" + suffix)
        w_hh = getattr(self, "weight_hh" + suffix)
        gates_x = getattr(self, "ln_ih" + suffix)(F.linear(x, getattr(self, "weight_ih" + suffix)))
        gates_x = gates_x + getattr(self, "bias_ih" + suffix)  # (B, T, 4H), once for all steps
        h, c = state
        outputs = []
        for t in range(x.size(1)):
            i, f, g, o = (gates_x[:, t] + ln_hh(F.linear(h, w_hh))).chunk(4, 1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(ln_c(c_new))
            if mask is not None:
                keep = mask[:, t].unsqueeze(1)
                h_new, c_new = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
            h, c = h_new, c_new
            outputs.append(h)
        out = torch.stack(outputs, dim=1)
        if index is not None:  # back to the input's order (the reversal is its own inverse)
            out = out.gather(1, index.unsqueeze(2).expand_as(out))
        return out, (h, c)


def _reversal(batch: int, steps: int, mask: torch.Tensor | None, device: torch.device
              ) -> torch.Tensor:
    """(B, T) positions that reverse each sequence within its length (padding stays)."""
    positions = torch.arange(steps, device=device)
    if mask is None:
        return positions.flip(0).expand(batch, steps)
    lengths = mask.sum(1, keepdim=True)
    return torch.where(mask, lengths - 1 - positions, positions)
