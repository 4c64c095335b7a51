"""An exported model run by onnxruntime behind the search protocol
(nmt.decoding.search.SearchModel).

    model = OnnxSeq2Seq(directory / "encoder.onnx", directory / "step.onnx")
    hyps = decode(model, batch, Decoding(beam_size=5))    # nmt/decoding/ search as is

Search sees torch tensors, as from any model: each call converts its inputs to NumPy
arrays (no copy: CPU tensors and arrays share memory) and the session's outputs back.
Encoder outputs and decoder states are torch tensors between calls, so ``reorder_*``
are torch's ``index_select``, as for the PyTorch model. The graphs are described in
nmt/export/graphs.py.

A session runs on the thread that calls it with ``threads`` threads of its own
(default: torch's setting when it is built, which the command-line tools share among the
translator's workers first); onnxruntime lets several threads run one session at once,
so the translator's workers decode batches side by side as with a PyTorch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from nmt.core.errors import CheckpointError
from nmt.export.graphs import STATE_BATCH_DIM
from nmt.model.encoder import sequence_mask


class OnnxEncoding(NamedTuple):
    """The encoder graph's outputs, one row per sentence (or beam)."""

    memory: torch.Tensor  # (B, S, M)
    keys: torch.Tensor  # (B, S, A)
    mask: torch.Tensor  # (B, S) bool, True at real tokens
    hidden: tuple[torch.Tensor, ...]  # the decoder's first h[, c], (L, B, H) each


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    # onnxruntime hands out arrays of its own, freshly allocated: no copy needed
    return torch.from_numpy(np.ascontiguousarray(a))


def session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads
    (None: torch's current setting), all graph optimizations on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Pool threads would spin between the many small calls of a search, on cores the
    # other workers could use.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types: a file it cannot load
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({first[:300]})") from None


class OnnxSeq2Seq:
    """The encoder and step graphs as one searchable model (nmt.decoding.search.SearchModel)."""

    def __init__(self, encoder: Path, step: Path, threads: int | None = None) -> None:
        self.encoder = session(encoder, threads)
        self.stepper = session(step, threads)
        self.step_inputs = [i.name for i in self.stepper.get_inputs()]
        self.step_outputs = [o.name for o in self.stepper.get_outputs()]
        self.state_names = [n for n in STATE_BATCH_DIM if n in self.step_inputs]
        encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        expected = ["memory", "keys", *(n for n in self.state_names if n != "feed")]
        wanted = {"logits", *(f"{n}_out" for n in self.state_names)}
        if encoder_outputs != expected or not wanted <= set(self.step_outputs):
            raise CheckpointError(f"{encoder.parent}: graphs with outputs {encoder_outputs} "
                                  f"and {self.step_outputs}, not those of export.py")
        self.feed_size = 0
        if "feed" in self.state_names:
            shape = self.stepper.get_inputs()[self.step_inputs.index("feed")].shape
            self.feed_size = int(shape[1])

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> OnnxEncoding:
        """src (B, S), src_lengths (B,) -> OnnxEncoding."""
        memory, keys, *hidden = (_tensor(a) for a in self.encoder.run(
            None, {"src": _array(src), "src_lengths": _array(src_lengths)}))
        return OnnxEncoding(memory, keys, sequence_mask(src_lengths, src.size(1)), tuple(hidden))

    def init_state(self, enc: OnnxEncoding) -> tuple[torch.Tensor, ...]:
        """The decoder's first state parts: h[, c] from the encoder graph[, a zero feed]."""
        feed = [enc.memory.new_zeros(enc.memory.size(0), self.feed_size)] if self.feed_size else []
        return (*enc.hidden, *feed)

    def step(self, prev_tokens: torch.Tensor, state: tuple[torch.Tensor, ...],
             enc: OnnxEncoding) -> tuple[torch.Tensor, tuple[torch.Tensor, ...],
                                         torch.Tensor | None]:
        """(B,) previous tokens -> logits (B, V), new state, attention (B, S) or None."""
        given = {"prev": prev_tokens, "keys": enc.keys, "memory": enc.memory, "mask": enc.mask,
                 **dict(zip(self.state_names, state, strict=True))}
        found = self.stepper.run(None, {n: _array(given[n]) for n in self.step_inputs})
        out = dict(zip(self.step_outputs, found, strict=True))
        new_state = tuple(_tensor(out[f"{n}_out"]) for n in self.state_names)
        attention = _tensor(out["attention"]) if "attention" in out else None
        return _tensor(out["logits"]), new_state, attention

    @staticmethod
    def reorder_encoder(enc: OnnxEncoding, index: torch.Tensor) -> OnnxEncoding:
        """Rows ``index`` (K,) of every field."""
        return OnnxEncoding(enc.memory.index_select(0, index), enc.keys.index_select(0, index),
                            enc.mask.index_select(0, index),
                            tuple(h.index_select(1, index) for h in enc.hidden))

    def reorder_state(self, state: tuple[torch.Tensor, ...], index: torch.Tensor
                      ) -> tuple[torch.Tensor, ...]:
        """Rows ``index`` (K,) of each state part."""
        return tuple(part.index_select(STATE_BATCH_DIM[name], index)
                     for name, part in zip(self.state_names, state, strict=True))
