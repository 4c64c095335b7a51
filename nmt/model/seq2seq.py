"""The encoder-decoder: embeddings, encoder, bridge, decoder and output layer.

The interface search and training use:

    enc = model.encode(src, src_lengths)           # EncoderOutput, once per batch
    state = model.init_state(enc)                   # DecoderState
    logits, state, attn = model.step(prev, state, enc)   # one target position
    logits = model(src, src_lengths, tgt_in)        # teacher forcing, (B, T, V)
    model.reorder_encoder(enc, index) / model.reorder_state(state, index)   # beams
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from nmt.model.attention import ATTENTION_CHOICES
from nmt.model.decoder import DecoderState, RNNDecoder
from nmt.model.encoder import RNNS, RNNEncoder, State, sequence_mask

BRIDGES = ("linear", "zeros")


class EncoderOutput(NamedTuple):
    memory: torch.Tensor  # (B, S, M) encoder outputs
    keys: torch.Tensor  # (B, S, A) attention keys, projected once per batch
    mask: torch.Tensor  # (B, S) bool, True at real tokens
    final: State  # encoder final state, (L*D, B, H) or (h, c)


def _select(state: State, index: torch.Tensor, dim: int) -> State:
    if isinstance(state, tuple):
        return tuple(s.index_select(dim, index) for s in state)  # type: ignore[return-value]
    return state.index_select(dim, index)


class Seq2Seq(nn.Module):
    """RNN encoder-decoder with attention. All arguments are plain values."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, emb_size: int = 256,
                 cell: str = "lstm", encoder_hidden: int = 256, encoder_layers: int = 1,
                 bidirectional: bool = True, decoder_hidden: int = 512, decoder_layers: int = 1,
                 attention: str = "bahdanau", attention_size: int | None = None,
                 input_feeding: bool = True, bridge: str = "linear", dropout: float = 0.2,
                 tie_embeddings: bool = True, tie_src_tgt: bool = False, pad_id: int = 0) -> None:
        super().__init__()
        if cell not in RNNS:
            raise ValueError(f"unknown cell {cell!r}; valid choices: {', '.join(RNNS)}")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"unknown attention {attention!r}; valid choices: "
                             f"{', '.join(ATTENTION_CHOICES)}")
        if bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {bridge!r}; valid choices: {', '.join(BRIDGES)}")
        sizes = {"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                 "emb_size": emb_size, "encoder_hidden": encoder_hidden,
                 "encoder_layers": encoder_layers, "decoder_hidden": decoder_hidden,
                 "decoder_layers": decoder_layers}
        if attention_size is not None:
            sizes["attention_size"] = attention_size
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if attention == "none" and bridge == "zeros":
            raise ValueError("attention=none with bridge=zeros: the decoder would never see the "
                             "source; use bridge=linear or an attention")
        if tie_src_tgt and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"tie_src_tgt needs one joint vocabulary, but the source has "
                             f"{src_vocab_size} and the target {tgt_vocab_size} entries")

        self.cell = cell
        self.pad_id = pad_id
        self.src_embed = nn.Embedding(src_vocab_size, emb_size, padding_idx=pad_id)
        self.tgt_embed = (self.src_embed if tie_src_tgt
                          else nn.Embedding(tgt_vocab_size, emb_size, padding_idx=pad_id))
        self.encoder = RNNEncoder(cell, emb_size, encoder_hidden, encoder_layers, bidirectional,
                                  dropout)
        self.decoder = RNNDecoder(cell, emb_size, decoder_hidden, self.encoder.output_size,
                                  decoder_layers, attention, attention_size, input_feeding,
                                  dropout)
        self.emb_dropout = nn.Dropout(dropout)
        # Bridge: the top encoder layer's final state (both directions) -> every decoder layer.
        n_states = 2 if cell == "lstm" else 1
        self.bridge = (nn.ModuleList(
            nn.Linear(self.encoder.output_size, decoder_hidden * decoder_layers)
            for _ in range(n_states)) if bridge == "linear" else None)
        # Tied output embeddings need the decoder output in embedding space.
        out_size = decoder_hidden
        self.pre_output = None
        if tie_embeddings and decoder_hidden != emb_size:
            self.pre_output = nn.Linear(decoder_hidden, emb_size)
            out_size = emb_size
        self.generator = nn.Linear(out_size, tgt_vocab_size)
        self._init_embeddings(emb_size)
        if tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    def _init_embeddings(self, emb_size: int) -> None:
        # N(0, 1/emb) keeps initial logits small when the output layer is tied to them.
        for emb in {id(e): e for e in (self.src_embed, self.tgt_embed)}.values():
            nn.init.normal_(emb.weight, std=emb_size ** -0.5)
            with torch.no_grad():
                emb.weight[self.pad_id].zero_()

    # -- encoder side --------------------------------------------------------------------

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """src (B, S), src_lengths (B,) -> EncoderOutput."""
        memory, final = self.encoder(self.src_embed(src), src_lengths)  # (B, S, M)
        mask = sequence_mask(src_lengths, src.size(1))  # (B, S)
        return EncoderOutput(memory, self.decoder.project_keys(memory), mask, final)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """The decoder's first state: the bridged encoder state (or zeros), a zero feed."""
        batch = enc.memory.size(0)
        layers, size = self.decoder.num_layers, self.decoder.hidden_size
        states = enc.final if isinstance(enc.final, tuple) else (enc.final,)
        if self.bridge is None:
            zeros = enc.memory.new_zeros(layers, batch, size)
            hidden = [zeros for _ in states]
        else:
            hidden = []
            for proj, state in zip(self.bridge, states, strict=True):
                top = self._top_layer(state)  # (B, M)
                h = torch.tanh(proj(top)).view(batch, layers, size).transpose(0, 1)
                hidden.append(h.contiguous())  # (L, B, H)
        h0 = (hidden[0], hidden[1]) if self.cell == "lstm" else hidden[0]
        return DecoderState(h0, self.decoder.initial_feed(batch, enc.memory))

    def _top_layer(self, state: torch.Tensor) -> torch.Tensor:
        """(L*D, B, H) final states -> (B, D*H) of the top layer, directions concatenated."""
        d = self.encoder.num_directions
        top = state[-d:]  # (D, B, H)
        return top.transpose(0, 1).reshape(state.size(1), -1)

    # -- decoder side --------------------------------------------------------------------

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (..., H) -> vocabulary logits (..., V)."""
        if self.pre_output is not None:
            outputs = self.pre_output(outputs)
        return self.generator(outputs)

    def step(self, prev_tokens: torch.Tensor, state: DecoderState, enc: EncoderOutput
             ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """prev_tokens (B,) -> logits (B, V), new state, attention (B, S) or None."""
        emb = self.emb_dropout(self.tgt_embed(prev_tokens))  # (B, E)
        out, state, attn = self.decoder.step(emb, state, enc.keys, enc.memory, enc.mask)
        return self.logits(out), state, attn

    def forward_with_attention(self, src: torch.Tensor, src_lengths: torch.Tensor,
                               tgt_in: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: logits (B, T, V) and attention (B, T, S) or None."""
        enc = self.encode(src, src_lengths)
        emb = self.emb_dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        out, attn = self.decoder(emb, self.init_state(enc), enc.keys, enc.memory, enc.mask)
        return self.logits(out), attn  # one output matmul for all positions

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
                ) -> torch.Tensor:
        return self.forward_with_attention(src, src_lengths, tgt_in)[0]

    # -- reordering for beam search ------------------------------------------------------

    @staticmethod
    def reorder_encoder(enc: EncoderOutput, index: torch.Tensor) -> EncoderOutput:
        """Rows ``index`` (K,) of every field, e.g. each sentence repeated once per beam."""
        return EncoderOutput(enc.memory.index_select(0, index), enc.keys.index_select(0, index),
                             enc.mask.index_select(0, index), _select(enc.final, index, 1))

    @staticmethod
    def reorder_state(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Rows ``index`` (K,) of the state: a new state, the old one is left as it was."""
        feed = state.feed.index_select(0, index) if state.feed is not None else None
        return DecoderState(_select(state.hidden, index, 1), feed)
