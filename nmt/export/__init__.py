"""Exported models: ONNX graphs (fp32 or int8) run by onnxruntime through the same search.
May import decoding, model, data and core; the inference programs load exports from here.

    python export.py checkpoint=model.ckpt format=onnx output=model-onnx   # nmt/export/exporter.py
    Translator.from_checkpoint("model-onnx")                             # load_exported below

``load_exported`` checks the directory's manifest (nmt/export/manifest.py) and returns
the model (nmt/export/runtime.py, the search protocol over onnxruntime sessions) and its
tokenizers. Nothing here imports onnx or onnxruntime until a model is exported or loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nmt.core.errors import CheckpointError, ConfigError, TokenizerError
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.search import SearchModel
from nmt.export.manifest import read_manifest

__all__ = ["load_exported"]


def load_exported(directory: str | os.PathLike, device: str | torch.device = "cpu",
                  threads: int | None = None) -> tuple[SearchModel, Tokenizer, Tokenizer]:
    """The model an export directory holds (an ``OnnxSeq2Seq``) and its source and target
    tokenizers.

    ``threads``: each session's intra-op threads (None: torch's current setting).
    """
    path = Path(directory)
    if torch.device(device).type != "cpu":
        raise ConfigError(f"{path}: exported models run on the CPU (onnxruntime); "
                          "use device=cpu, or the .ckpt checkpoint on a GPU")
    manifest = read_manifest(path)
    try:
        from nmt.export.runtime import OnnxSeq2Seq
    except ImportError:
        raise ConfigError(f"{path}: running an exported model needs onnxruntime: "
                          "pip install -e '.[export]'") from None
    try:
        src, tgt = (Tokenizer.load(path / manifest["tokenizers"][side]) for side in ("src", "tgt"))
    except (KeyError, TypeError, TokenizerError) as e:
        raise CheckpointError(f"{path}: the tokenizers listed in the manifest do not load "
                              f"({e})") from None
    graphs = manifest["graphs"]
    model = OnnxSeq2Seq(path / graphs["encoder"], path / graphs["step"], threads)
    return model, src, tgt
