"""The encoder-decoder: any encoder, then bridge, target embeddings, decoder and output layer.

The interface search and training use:

    enc = model.encode(src, src_lengths)           # EncoderOutput, once per batch
    state = model.init_state(enc)                   # DecoderState
    logits, state, attn = model.step(prev, state, enc)   # one target position
    logits = model(src, src_lengths, tgt_in)        # teacher forcing, (B, T, V)
    model.reorder_encoder(enc, index) / model.reorder_state(state, index)   # beams

Models are built by nmt.model.registry.build_model, which picks the encoder.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from nmt.model.cells import State, map_state
from nmt.model.decoder import DecoderState, RNNDecoder
from nmt.model.dropout import Dropout, drop_words
from nmt.model.encoder import Encoder

BRIDGES = ("linear", "zeros")
# Parameter names of earlier versions -> today's; old checkpoints load through them.
LEGACY_NAMES = {"src_embed.": "encoder.embed."}


class EncoderOutput(NamedTuple):
    memory: torch.Tensor  # (B, S, M) encoder outputs
    keys: torch.Tensor  # (B, S, A) attention keys, projected once per batch
    mask: torch.Tensor  # (B, S) bool, True at real tokens
    final: State  # what the bridge reads: (B, M), or a tuple of them (see Encoder)


def _select(state: State, index: torch.Tensor, dim: int) -> State:
    return map_state(lambda s: s.index_select(dim, index), state)


class Seq2Seq(nn.Module):
    """An encoder (see nmt.model.encoder.Encoder) and an RNN decoder with attention.

    ``tgt_embed`` is the target embedding (the text encoder's too when they are
    shared); every other argument is a plain value. Every embedding in the model is
    initialised here, last, in module order: weights from one seed stay those of
    earlier versions.
    """

    def __init__(self, encoder: Encoder, tgt_embed: nn.Embedding, cell: str = "lstm",
                 decoder_hidden: int = 512, decoder_layers: int = 1,
                 attention: str = "bahdanau", attention_size: int | None = None,
                 input_feeding: bool = True, bridge: str = "linear", dropout: float = 0.2,
                 tie_embeddings: bool = True, attention_gate: bool = False,
                 word_dropout: float = 0.0) -> None:
        super().__init__()
        if bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {bridge!r}; valid choices: {', '.join(BRIDGES)}")
        if attention == "none" and bridge == "zeros":
            raise ValueError("attention=none with bridge=zeros: the decoder would never see the "
                             "source; use bridge=linear or an attention")
        self.record: dict[str, Any] | None = None  # how the registry built it (checkpoints)
        # Registered first: the source embedding comes first in parameters(), as it did.
        self.encoder = encoder
        self.tgt_embed = tgt_embed
        emb_size = tgt_embed.embedding_dim
        self.decoder = RNNDecoder(cell, emb_size, decoder_hidden, encoder.output_size,
                                  decoder_layers, attention, attention_size, input_feeding,
                                  dropout, attention_gate)
        self.emb_dropout = Dropout(dropout)
        self.word_dropout = word_dropout  # of target inputs in training (the encoder: its own)
        # Bridge: the encoder's final state -> every layer of each decoder state part.
        n_states = 2 if self.decoder.paired else 1
        self.bridge = (nn.ModuleList(
            nn.Linear(encoder.output_size, decoder_hidden * decoder_layers)
            for _ in range(n_states)) if bridge == "linear" else None)
        # Tied output embeddings need the decoder output in embedding space.
        out_size = decoder_hidden
        self.pre_output = None
        if tie_embeddings and decoder_hidden != emb_size:
            self.pre_output = nn.Linear(decoder_hidden, emb_size)
            out_size = emb_size
        self.generator = nn.Linear(out_size, tgt_embed.num_embeddings)
        self._init_embeddings()
        if tie_embeddings:
            self.generator.weight = self.tgt_embed.weight
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def _init_embeddings(self) -> None:
        # N(0, 1/emb) keeps initial logits small when the output layer is tied to them.
        for emb in self.modules():  # each module once, the source's before the target's
            if isinstance(emb, nn.Embedding):
                nn.init.normal_(emb.weight, std=emb.embedding_dim ** -0.5)
                if emb.padding_idx is not None:
                    with torch.no_grad():
                        emb.weight[emb.padding_idx].zero_()

    # -- encoder side --------------------------------------------------------------------

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """src (B, S), src_lengths (B,) -> EncoderOutput."""
        return self.encoder_output(*self.encoder(src, src_lengths))

    def encoder_output(self, memory: torch.Tensor, mask: torch.Tensor, final: State
                       ) -> EncoderOutput:
        """An encoder's three outputs (memory (B, S, M), mask (B, S), final) ->
        EncoderOutput, the attention keys projected once."""
        return EncoderOutput(memory, self.decoder.project_keys(memory), mask, final)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """The decoder's first state: the bridged encoder state (or zeros), a zero feed."""
        batch = enc.memory.size(0)
        layers, size = self.decoder.num_layers, self.decoder.hidden_size
        n_states = 2 if self.decoder.paired else 1
        if self.bridge is None:
            zeros = enc.memory.new_zeros(layers, batch, size)
            hidden = [zeros] * n_states
        else:
            # One final state serves every part (an image's mean feature for h and c).
            states = enc.final if isinstance(enc.final, tuple) else (enc.final,) * n_states
            hidden = []
            for proj, top in zip(self.bridge, states, strict=True):  # top (B, M)
                h = torch.tanh(proj(top)).view(batch, layers, size).transpose(0, 1)
                hidden.append(h.contiguous())  # (L, B, H)
        h0 = (hidden[0], hidden[1]) if self.decoder.paired else hidden[0]
        return DecoderState(h0, self.decoder.initial_feed(batch, enc.memory))

    # -- decoder side --------------------------------------------------------------------

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (..., H) -> vocabulary logits (..., V)."""
        return self.generator(self.pre_logits(outputs))

    def step(self, prev_tokens: torch.Tensor, state: DecoderState, enc: EncoderOutput
             ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """prev_tokens (B,) -> logits (B, V), new state, attention (B, S) or None."""
        out, state, attn = self.step_outputs(prev_tokens, state, enc)
        return self.logits(out), state, attn

    def step_outputs(self, prev_tokens: torch.Tensor, state: DecoderState, enc: EncoderOutput
                     ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """``step`` without the output layer: decoder outputs (B, H) instead of logits."""
        emb = self.emb_dropout(self.tgt_embed(prev_tokens))  # (B, E)
        return self.decoder.step(emb, state, enc.keys, enc.memory, enc.mask)

    def pre_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (..., H) -> what the output layer's rows multiply (..., E)."""
        return outputs if self.pre_output is None else self.pre_output(outputs)

    def output_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output layer's weights and biases for vocabulary ``ids`` (any shape ...):
        (..., E) and (...) or None; ``logits`` restricted to them (nmt/decoding/shortlist.py)."""
        flat, bias = ids.reshape(-1), self.generator.bias
        weight = self.generator.weight.index_select(0, flat).view(*ids.shape, -1)
        return weight, None if bias is None else bias.index_select(0, flat).view(ids.shape)

    def forward_with_attention(self, src: torch.Tensor, src_lengths: torch.Tensor,
                               tgt_in: torch.Tensor, src_index: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: logits (N, T, V) and attention (N, T, S) or None. Target row n
        is that of source ``src_index[n]`` (an image and its captions; None: of source n)."""
        enc = self.encode(src, src_lengths)
        if src_index is not None:
            enc = self.reorder_encoder(enc, src_index)
        return self.teacher_forced(enc, tgt_in)

    def teacher_forced(self, enc: EncoderOutput, tgt_in: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder side of teacher forcing: logits (B, T, V) and attention (B, T, S)
        or None for target inputs (B, T) given an encoded batch."""
        if self.training:
            tgt_in = drop_words(tgt_in, self.word_dropout)
        emb = self.emb_dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        out, attn = self.decoder(emb, self.init_state(enc), enc.keys, enc.memory, enc.mask)
        return self.logits(out), attn  # one output matmul for all positions

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor,
                src_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_attention(src, src_lengths, tgt_in, src_index)[0]

    # -- reordering for beam search ------------------------------------------------------

    @staticmethod
    def reorder_encoder(enc: EncoderOutput, index: torch.Tensor) -> EncoderOutput:
        """Rows ``index`` (K,) of every field, e.g. each sentence repeated once per beam."""
        return EncoderOutput(enc.memory.index_select(0, index), enc.keys.index_select(0, index),
                             enc.mask.index_select(0, index), _select(enc.final, index, 0))

    @staticmethod
    def reorder_state(state: DecoderState, index: torch.Tensor) -> DecoderState:
        """Rows ``index`` (K,) of the state: a new state, the old one is left as it was."""
        feed = state.feed.index_select(0, index) if state.feed is not None else None
        return DecoderState(_select(state.hidden, index, 1), feed)


def _rename_legacy_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                        *args: Any) -> None:
    """load_state_dict pre-hook: old parameter names (LEGACY_NAMES) -> today's, in place.

    It runs for every way of loading (Translator, Lightning's resume, load_from_checkpoint).
    """
    for old, new in LEGACY_NAMES.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            renamed = prefix + new + key[len(prefix + old):]
            if renamed not in state_dict:
                state_dict[renamed] = state_dict.pop(key)
