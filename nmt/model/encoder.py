"""Encoders: what the decoder attends over. The text encoder embeds tokens and runs an RNN."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.model.cells import State, build_rnn, map_state, run_rnn
from nmt.model.dropout import Dropout, drop_words


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True at real positions. The one place masks
    are built."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class Encoder(nn.Module):
    """Base of every encoder (text, image, ...); Seq2Seq needs nothing else from it.

    ``forward(src, src_lengths)`` takes the batch's source as the data gives it
    (token ids (B, S) and lengths (B,) for text) and returns three things:

    - memory (B, S, M): one vector per source position (token, image region) that
      attention reads; M is ``output_size``;
    - mask (B, S) bool: True at real positions; attention never looks at the others;
    - final: what the bridge makes the decoder's first state from: a (B, M) tensor,
      or a tuple of (B, M) tensors, one per part of the decoder state (LSTM's (h, c)).
      A single tensor serves every part (e.g. the mean of an image's regions).

    Subclasses set ``output_size`` (int, M) in ``__init__``. Seq2Seq initialises every
    nn.Embedding of the model, the encoder's included (N(0, 1/dim), padding row zero);
    other weights are the encoder's own business (e.g. pretrained CNN weights).
    """

    output_size: int

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, State]:
        raise NotImplementedError


class RNNEncoder(Encoder):
    """Token embeddings, then a (bidirectional, multi-layer) RNN over packed sequences."""

    def __init__(self, embed: nn.Embedding, cell: str, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0,
                 word_dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = embed
        self.word_dropout = word_dropout  # whole source tokens -> UNK, in training
        self.cell = cell  # its name in the cell registry (nmt/model/cells.py)
        self.rnn = build_rnn(cell, embed.embedding_dim, hidden_size, num_layers, dropout,
                             bidirectional)
        self.dropout = Dropout(dropout)
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """(B, S) ids, (B,) lengths -> memory (B, S, H * D), mask (B, S), final (B, H * D).

        Padded positions of the memory are zero; the final state is that of each
        sequence's last real token (packing takes care of it), top layer only.
        """
        emb = self.embed(drop_words(src, self.word_dropout) if self.training else src)
        packed = pack_padded_sequence(self.dropout(emb), src_lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        packed_out, final = run_rnn(self.rnn, packed)  # final (L*D, B, H), or (h, c)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.size(1))
        mask = sequence_mask(src_lengths, src.size(1))  # (B, S)
        top = map_state(self._top_layer, final)
        return self.dropout(outputs), mask, top  # (B, S, H*D), (B, S), (B, H*D)

    def _top_layer(self, state: torch.Tensor) -> torch.Tensor:
        """(L*D, B, H) final states -> (B, D*H) of the top layer, directions concatenated."""
        d = self.num_directions
        top = state[-d:]  # (D, B, H)
        return top.transpose(0, 1).reshape(state.size(1), -1)
