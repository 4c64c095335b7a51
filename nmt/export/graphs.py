"""The two ONNX graphs of an exported model, and the torch modules they are traced from.

Search calls a model once per batch to encode and once per target position to step
(nmt/decoding/search.py, ``SearchModel``); an exported model is two graphs cut at the same places:

    encoder.onnx  src (B, S) int64, src_lengths (B,) int64
                  -> memory (B, S, M), keys (B, S, A), h (L, B, H)[, c (L, B, H)]
    step.onnx     prev (B,) int64, keys, memory, mask (B, S) bool, h[, c][, feed (B, H)]
                  -> logits (B, V), h_out[, c_out][, feed_out][, attention (B, S)]

The encoder graph ends with the bridge, so ``h``/``c`` are the decoder's first state
(``Seq2Seq.init_state``); a zero ``feed`` starts input feeding. Batch and source length
are dynamic axes of both graphs.

The encoder is the model's own forward, packed sequences included: the TorchScript
exporter (``dynamo=False``) turns a packed ``nn.LSTM``/``GRU``/``RNN`` into the ONNX
recurrence with ``sequence_lens``, which, like packing, runs each direction over the real
tokens only and returns each sequence's state at its last real token (h and c), every
layer; packing's sort and unsort become ops on the batch axis (checked on ragged,
unsorted batches of other sizes than the trace's: tests/test_export.py).

The step cannot be traced as the model runs it: the decoder calls cell kernels
(``torch.gru_cell``...), most of which the exporter cannot translate, so ``StepGraph``
redoes the recurrence with the same weights in the kernels' own order of operations (two
matrix products, then the gates); attention and output layer are the model's own modules.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nmt.core.errors import ConfigError
from nmt.core.tokens import EOS_ID, PAD_ID
from nmt.model import Seq2Seq
from nmt.model.encoder import RNNEncoder

OPSET = 17
ENCODER_FILE = "encoder.onnx"
STEP_FILE = "step.onnx"
CELLS = ("rnn", "gru", "lstm")  # the recurrences StepGraph knows
# The batch axis of each decoder state part (h, c: (L, B, H); feed: (B, H)).
STATE_BATCH_DIM = {"h": 1, "c": 1, "feed": 0}


def state_names(paired: bool, input_feeding: bool) -> list[str]:
    """The decoder state parts, in the order the graphs take and give them."""
    return ["h", "c"][: 2 if paired else 1] + (["feed"] if input_feeding else [])


def check_exportable(model: Seq2Seq) -> None:
    """ConfigError, in one line, for what the graphs cannot express."""
    if not isinstance(model.encoder, RNNEncoder):
        kind = (model.record or {}).get("config", {}).get("encoder", type(model.encoder).__name__)
        raise ConfigError(f"export handles text models (encoder=rnn), not encoder={kind}")
    if model.decoder.cell not in CELLS:  # encoder and decoder share the cell
        raise ConfigError(f"export handles the cells {', '.join(CELLS)}, not "
                          f"cell={model.decoder.cell}")


class EncoderGraph(nn.Module):
    """src, src_lengths -> memory, keys and the decoder's first state parts: the model's
    own ``encode`` and ``init_state``, packing included."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.model.encode(src, src_lengths)
        hidden = self.model.init_state(enc).hidden
        parts = hidden if isinstance(hidden, tuple) else (hidden,)
        return (enc.memory, enc.keys, *parts)


class StepGraph(nn.Module):
    """One decoder step: prev, keys, memory, mask, state parts -> logits, new state parts
    and the attention weights (when the model attends)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model
        self.names = state_names(model.decoder.paired, model.decoder.input_feeding)

    def forward(self, prev: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor,
                mask: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.names, state, strict=True))
        decoder = self.model.decoder
        x = self.model.tgt_embed(prev)  # (B, E); dropout is off in eval mode
        if decoder.input_feeding:
            x = torch.cat([x, named["feed"]], dim=-1)
        h, hidden = recur(decoder.rnn, decoder.cell, decoder.num_layers, x, named["h"],
                          named.get("c"))
        out, weights = decoder._attend(h, keys, memory, mask)  # (B, H), (B, S) or None
        outputs = [self.model.logits(out), *hidden]
        if decoder.input_feeding:
            outputs.append(out)
        if weights is not None:
            outputs.append(weights)
        return tuple(outputs)


def recur(rnn: nn.Module, cell: str, num_layers: int, x: torch.Tensor, h: torch.Tensor,
          c: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step of the stacked recurrence ``rnn`` (its own weights), as ATen's CPU cells
    compute it: x (B, I), h and c (L, B, H) -> top output (B, H), [h (L, B, H)[, c]]."""
    hs, cs = [], []
    for layer in range(num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}_l{layer}") for name in
                                  ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        gi, gh = F.linear(x, w_ih, b_ih), F.linear(h[layer], w_hh, b_hh)  # (B, G*H) each
        if cell == "lstm":
            assert c is not None  # the encoder graph gives c with h for an LSTM
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            cs.append(c_new)
        elif cell == "gru":
            i_r, i_z, i_n = gi.chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            x = (h[layer] - n) * z + n
        else:  # rnn (tanh)
            x = torch.tanh(gh + gi)
        hs.append(x)
    return x, [torch.stack(hs), *([torch.stack(cs)] if cs else [])]


def example_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three ragged, unsorted sources to trace with (the trace keeps packing's sort),
    ids within any vocabulary of this toolkit (4 special ids and more)."""
    lengths = torch.tensor([3, 5, 2])
    src = torch.full((3, 5), PAD_ID, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        src[row, : n - 1] = torch.arange(4, 3 + n) % vocab_size
        src[row, n - 1] = EOS_ID
    return src, lengths


@contextlib.contextmanager
def _native_warnings_dropped() -> Iterator[None]:
    """Keep the exporter's C++ warnings (that prim::PackPadded has no shape inference: a
    later pass of the exporter removes those nodes) off the terminal. They are written to
    file descriptor 2 directly, past Python's warnings filters."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def export_graphs(model: Seq2Seq, directory: Path, opset: int = OPSET) -> list[str]:
    """Write ENCODER_FILE and STEP_FILE for ``model`` (eval mode) into ``directory``;
    return the file names."""
    check_exportable(model)
    model = model.eval()
    names = state_names(model.decoder.paired, model.decoder.input_feeding)
    hidden = [n for n in names if n != "feed"]
    src, src_lengths = example_batch(model.tgt_embed.num_embeddings)
    batch, src_len = {0: "batch"}, {0: "batch", 1: "src_len"}
    state_axes = {n: {STATE_BATCH_DIM[n]: "batch"} for n in names}
    with torch.no_grad(), warnings.catch_warnings(), _native_warnings_dropped():
        # The TorchScript exporter's deprecation note and its tracer's remarks on packing.
        warnings.simplefilter("ignore")
        memory, keys, *parts = EncoderGraph(model)(src, src_lengths)
        torch.onnx.export(
            EncoderGraph(model), (src, src_lengths), str(directory / ENCODER_FILE),
            dynamo=False, opset_version=opset, input_names=["src", "src_lengths"],
            output_names=["memory", "keys", *hidden],
            dynamic_axes={"src": src_len, "src_lengths": batch, "memory": src_len,
                          "keys": src_len, **{n: state_axes[n] for n in hidden}})
        mask = torch.arange(src.size(1)).unsqueeze(0) < src_lengths.unsqueeze(1)  # (B, S)
        feed = [torch.zeros(src.size(0), model.decoder.hidden_size)] if "feed" in names else []
        prev = torch.tensor([EOS_ID + 1, EOS_ID + 2, EOS_ID + 3]) % model.tgt_embed.num_embeddings
        outputs = ["logits", *(f"{n}_out" for n in names)]
        axes = {"prev": batch, "keys": src_len, "memory": src_len, "mask": src_len,
                "logits": batch, **state_axes, **{f"{n}_out": state_axes[n] for n in names}}
        if model.decoder.attention is not None:
            outputs.append("attention")
            axes["attention"] = src_len
        torch.onnx.export(
            StepGraph(model), (prev, keys, memory, mask, *parts, *feed),
            str(directory / STEP_FILE), dynamo=False, opset_version=opset,
            input_names=["prev", "keys", "memory", "mask", *names], output_names=outputs,
            dynamic_axes=axes)
    return [ENCODER_FILE, STEP_FILE]
