"""format=int8: the exported graphs with int8 weights (onnxruntime's dynamic quantization).

Weights of the matrix products (``MatMul``, ``Gemm``: embeddings' output layer, attention,
cells, bridge) and of the encoder's recurrence (``LSTM``) are stored as int8 with a scale
per output channel; activations are quantized to uint8 on the fly, per call, from their
own range. The graphs keep their inputs and outputs, so the same runtime class
(nmt/export/runtime.py) and search run them. Embedding lookups stay float32: they cost
nothing per step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

# What is quantized, and how (written into manifest.json).
OP_TYPES = ["MatMul", "Gemm", "LSTM"]
PER_CHANNEL = True
# 7-bit weights: AVX2 has no int8 dot product without 16-bit saturation (VNNI has);
# onnxruntime recommends reduced range there.
REDUCE_RANGE = True


def quantize_graphs(directory: Path, files: list[str]) -> dict[str, Any]:
    """Quantize each graph of ``directory`` in place; return the settings used."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime advises on the root logger to pre-process graphs first (shape inference,
    # graph optimization); tried on the demo model's graphs, it changed neither the
    # outputs nor the speed, so the advice is kept off the terminal.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        for name in files:
            source, target = directory / name, directory / f"{name}.int8"
            quantize_dynamic(source, target, op_types_to_quantize=OP_TYPES,
                             per_channel=PER_CHANNEL, reduce_range=REDUCE_RANGE,
                             weight_type=QuantType.QInt8)
            os.replace(target, source)
    finally:
        root.setLevel(level)
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "int8",
            "activations": "uint8, dynamic", "op_types": OP_TYPES, "per_channel": PER_CHANNEL,
            "reduce_range": REDUCE_RANGE}
