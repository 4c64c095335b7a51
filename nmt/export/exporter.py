"""export.py: a checkpoint -> a directory that runs without the training stack.

    python export.py checkpoint=model.ckpt format=onnx output=model-onnx
    python export.py checkpoint=model.ckpt format=int8 output=model-int8

The directory holds the two graphs (nmt/export/graphs.py; int8: quantized,
nmt/export/quantize.py), the SentencePiece models the checkpoint carries and
manifest.json (nmt/export/manifest.py). It is written under a temporary name beside
``output`` and renamed when complete: a failed export leaves nothing behind, and
``overwrite=true`` replaces an earlier export only once the new one is whole.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from nmt.core import __version__
from nmt.core.errors import CheckpointError, ConfigError
from nmt.decoding.checkpoints import load_checkpoint
from nmt.export.graphs import ENCODER_FILE, OPSET, STEP_FILE, check_exportable, export_graphs
from nmt.export.manifest import FORMAT_VERSION, FORMATS, MANIFEST, sha256, write_manifest
from nmt.model import model_from_checkpoint

log = logging.getLogger(__name__)
TOKENIZER_FILES = {"src": "src.spm", "tgt": "tgt.spm"}


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ConfigError(f"output={out} exists; remove it, choose another, or give "
                          "overwrite=true to replace an earlier export")
    if not (out / MANIFEST).is_file():
        raise ConfigError(f"output={out} exists and is not an export directory (no "
                          f"{MANIFEST}); overwrite=true only replaces earlier exports")


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"export needs {module}: pip install -e '.[export]'") from None


def export_checkpoint(checkpoint: str | os.PathLike, fmt: str, output: str | os.PathLike,
                      *, overwrite: bool = False, opset: int = OPSET) -> dict[str, Any]:
    """Export ``checkpoint`` (one translation model) as ``fmt`` into the directory
    ``output``; return the manifest."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: valid choices: {', '.join(FORMATS)}")
    if not isinstance(opset, int) or not 14 <= opset <= 20:
        raise ConfigError(f"opset must be an integer from 14 to 20, got {opset!r}")
    out = Path(output)
    _check_output(out, overwrite)
    for module in ("onnx", "onnxruntime"):
        _require(module)
    ckpt = load_checkpoint(checkpoint)
    if not ckpt["tokenizers"].get("src"):
        raise CheckpointError(f"{checkpoint}: an image captioning model; export handles "
                              "translation models")
    model = model_from_checkpoint(ckpt, str(checkpoint)).eval()
    check_exportable(model)
    assert model.record is not None  # model_from_checkpoint builds through the registry
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    old = out.parent / f".{out.name}.{os.getpid()}.old"
    try:
        tmp.mkdir()
        files = export_graphs(model, tmp, opset)
        quantization = None
        if fmt == "int8":
            from nmt.export.quantize import quantize_graphs

            quantization = quantize_graphs(tmp, files)
        for side, name in TOKENIZER_FILES.items():
            (tmp / name).write_bytes(ckpt["tokenizers"][side])
        manifest = {
            "format": fmt, "format_version": FORMAT_VERSION, "toolkit_version": __version__,
            "opset": opset, "src_vocab_size": model.record["src_vocab_size"],
            "tgt_vocab_size": model.record["tgt_vocab_size"], "model_record": model.record,
            "source_checkpoint": Path(checkpoint).name,
            "source_checkpoint_sha256": sha256(Path(checkpoint)),
            "graphs": {"encoder": ENCODER_FILE, "step": STEP_FILE},
            "tokenizers": TOKENIZER_FILES, "quantization": quantization,
        }
        manifest = write_manifest(tmp, manifest, [*files, *TOKENIZER_FILES.values()])
        if out.exists():  # checked above: an earlier export, replaced now the new one is whole
            out.rename(old)
        tmp.rename(out)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    log.info("%s -> %s (%s)", checkpoint, out, fmt)
    return {**manifest, "output": str(out)}


def run(cfg: Any) -> dict[str, Any]:
    """The export.py command (conf/export.yaml)."""
    checkpoint = cfg.checkpoint
    if not isinstance(checkpoint, str | os.PathLike):
        raise ConfigError("checkpoint: export takes one checkpoint, not a list; ensembles are "
                          "not exported (average.py makes one checkpoint of several)")
    summary = export_checkpoint(checkpoint, cfg.format, cfg.output,
                                overwrite=bool(cfg.overwrite), opset=cfg.opset)
    files = summary["files"]
    return {"output": summary["output"], "format": summary["format"],
            "opset": summary["opset"], "source_checkpoint": summary["source_checkpoint"],
            "megabytes": round(sum(f["bytes"] for f in files.values()) / 2**20, 2)}
