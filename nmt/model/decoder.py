"""The recurrent decoder with attention and optional input feeding.

Every attention type uses the same flow (Luong et al., 2015): the recurrence runs
first, its top state h_t queries the encoder states, and the attentional vector
o_t = tanh(W [h_t; c_t]) is what the output layer reads. With input feeding, o_t
is also fed to the next step's input, which forces a step-by-step loop in
training; without it, the recurrence runs over the whole target in one call and
attention is computed for all steps at once (``forward``'s fast path). Both
paths use the same parameters and give the same result.

The optional attention gate (Xu et al., 2015, sec. 4.2.1) scales the context vector
by beta_t = sigmoid(W_beta h_t) before the attentional layer reads it. The paper's
gate reads the previous state h_{t-1}, which its attention also reads; in Luong's
flow both read the current top state h_t.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import nn

from nmt.model.attention import build_attention
from nmt.model.cells import State, build_rnn, get_cell, map_state, run_rnn
from nmt.model.deferred import deferred_weight_gradients, linear, loop_linears
from nmt.model.dropout import Dropout


class DecoderState(NamedTuple):
    """Immutable decoder state; every step returns a new one."""

    hidden: State  # (L, B, H), or (h, c) for LSTM
    feed: torch.Tensor | None  # (B, H) previous attentional vector (input feeding) or None


class RNNDecoder(nn.Module):
    """Stacked RNN, then attention over the encoder states (Luong's flow, for every type)."""

    def __init__(self, cell: str, emb_size: int, hidden_size: int, memory_size: int,
                 num_layers: int = 1, attention: str = "bahdanau",
                 attention_size: int | None = None, input_feeding: bool = True,
                 dropout: float = 0.0, attention_gate: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.paired = get_cell(cell).paired  # (h, c) state, as LSTM's
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.input_feeding = input_feeding
        input_size = emb_size + (hidden_size if input_feeding else 0)
        self.rnn = build_rnn(cell, input_size, hidden_size, num_layers, dropout)
        self._kernel = get_cell(cell).kernel
        self._gates = get_cell(cell).gates
        self.attention = build_attention(attention, hidden_size, memory_size,
                                         attention_size or hidden_size)
        # Luong's attentional layer, without bias.
        self.combine = (nn.Linear(hidden_size + memory_size, hidden_size, bias=False)
                        if self.attention is not None else None)
        if attention_gate and self.attention is None:
            raise ValueError("attention_gate needs an attention; attention=none has no context "
                             "to gate")
        # No module at all without the gate: parameters and random draws stay as they were.
        self.gate = nn.Linear(hidden_size, memory_size) if attention_gate else None
        self.dropout = Dropout(dropout)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.attention.project_keys(memory) if self.attention is not None else memory

    def _attend(self, h: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h (B, [T,] H) -> attentional vectors (B, [T,] H) and weights (B, [T,] S)."""
        if self.attention is None:
            return self.dropout(h), None
        assert self.combine is not None  # built together with the attention
        context, weights = self.attention(h, keys, memory, mask)
        if self.gate is not None:  # beta_t (B, [T,] M): how much of the source to let in
            context = torch.sigmoid(linear(h, self.gate)) * context
        out = torch.tanh(linear(torch.cat([h, context], dim=-1), self.combine))
        return self.dropout(out), weights

    def step(self, emb: torch.Tensor, state: DecoderState, keys: torch.Tensor,
             memory: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """One step: emb (B, E) of the previous token -> output (B, H), new state, attn (B, S)."""
        x = emb
        if self.input_feeding:
            assert state.feed is not None  # initial_feed and step give one with input feeding
            x = torch.cat([emb, state.feed], dim=-1)
        h, hidden = self._recur(x, state.hidden)  # (B, H)
        o, weights = self._attend(h, keys, memory, mask)
        return o, DecoderState(hidden, o if self.input_feeding else None), weights

    def _recur(self, x: torch.Tensor, hidden: State) -> tuple[torch.Tensor, State]:
        """One time step of the stacked RNN with its own weights, layer by layer.

        The cell kernels (torch.lstm_cell, ...) are much cheaper for a single step
        than calling the multi-layer nn.LSTM on a length-1 sequence (oneDNN's set-up
        cost per call dominates), and they use the very same parameters. A cell
        registered without a kernel takes the slow, generic call.
        """
        rnn = self.rnn
        if self._kernel is None:
            out, hidden = run_rnn(rnn, x.unsqueeze(1), hidden)  # (B, 1, H)
            return out.squeeze(1), hidden
        if torch.is_autocast_enabled("cpu"):  # as run_rnn: recurrences in float32 on CPU
            with torch.autocast("cpu", enabled=False):
                x = x.float()
                hidden = map_state(torch.Tensor.float, hidden)
                return self._recur(x, hidden)
        loop = loop_linears() if self._gates is not None else None
        hs, cs = [], []
        inp = x
        for layer in range(self.num_layers):
            weights = (getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}"),
                       getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))
            state = (hidden[0][layer], hidden[1][layer]) if self.paired else hidden[layer]
            if loop is not None:  # a training loop: the kernel's maps, gradients deferred
                assert self._gates is not None  # loop is only set with it
                h_prev = state[0] if isinstance(state, tuple) else state
                step = self._gates(loop.linear(inp, weights[0], weights[2]),
                                   loop.linear(h_prev, weights[1], weights[3]), state)
            else:
                step = self._kernel(inp, state, *weights)
            if self.paired:
                h, c = step
                cs.append(c)
            else:
                h = step
            hs.append(h)
            inp = h
            if layer < self.num_layers - 1 and rnn.dropout and self.training:
                # nn.RNNBase keeps dropout as a float; Module.__getattr__'s stub says Tensor
                inp = nn.functional.dropout(inp, cast(float, rnn.dropout), training=True)
        if self.num_layers == 1:  # the usual case: views, not stack's copies, every step
            return h, ((h.unsqueeze(0), cs[0].unsqueeze(0)) if self.paired else h.unsqueeze(0))
        return h, ((torch.stack(hs), torch.stack(cs)) if self.paired else torch.stack(hs))

    def forward(self, emb: torch.Tensor, state: DecoderState, keys: torch.Tensor,
                memory: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: emb (B, T, E) -> outputs (B, T, H), attention (B, T, S)."""
        if not self.input_feeding:
            out, _ = run_rnn(self.rnn, emb, state.hidden)  # (B, T, H): the whole recurrence at once
            return self._attend(out, keys, memory, mask)
        outputs: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        with deferred_weight_gradients(emb):  # weight gradients once for all steps
            for emb_t in emb.unbind(1):  # unbind: one backward node, no zero-filled grads
                o, state, w = self.step(emb_t, state, keys, memory, mask)
                outputs.append(o)
                if w is not None:  # None without attention
                    weights.append(w)
        attn = torch.stack(weights, dim=1) if self.attention is not None else None
        return torch.stack(outputs, dim=1), attn

    def initial_feed(self, batch_size: int, like: torch.Tensor) -> torch.Tensor | None:
        if not self.input_feeding:
            return None
        return like.new_zeros(batch_size, self.hidden_size)
