"""manifest.json: what an export directory holds, and the checks before loading it.

    {"format": "onnx" | "int8", "format_version": 1, "toolkit_version": "0.1.0",
     "opset": 17, "src_vocab_size": 8000, "tgt_vocab_size": 8000,
     "model_record": {...},                       # the checkpoint's record (nmt.model)
     "source_checkpoint": "best-epoch03-step833.ckpt", "source_checkpoint_sha256": "...",
     "graphs": {"encoder": "encoder.onnx", "step": "step.onnx"},
     "tokenizers": {"src": "src.spm", "tgt": "tgt.spm"},
     "quantization": null | {...},                # how int8 graphs were made
     "files": {"encoder.onnx": {"sha256": "...", "bytes": 123}, ...}}

Every file the loader reads is listed under ``files`` with its sha256, checked on load:
a missing or changed file is a one-line CheckpointError, as is a manifest of a format or
version this toolkit does not read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nmt.core.errors import CheckpointError
from nmt.data.catalog import sha256_file as sha256

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
FORMATS = ("onnx", "int8")


def write_manifest(directory: Path, manifest: dict[str, Any], files: list[str]
                   ) -> dict[str, Any]:
    """Write ``manifest`` with ``files`` (names in ``directory``) and their sha256 added;
    return what was written."""
    listed = {name: {"sha256": sha256(directory / name),
                     "bytes": (directory / name).stat().st_size} for name in files}
    manifest = {**manifest, "files": listed}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """The checked manifest of an export directory: known format and version, every
    listed file present with its sha256."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory}: a directory without {MANIFEST}, not a model "
                              "written by export.py (give a .ckpt file or an export directory)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: not a manifest of export.py (a JSON object expected)")
    fmt, version = manifest.get("format"), manifest.get("format_version")
    if fmt not in FORMATS:
        raise CheckpointError(f"{path}: unknown export format {fmt!r}; this toolkit reads "
                              f"{', '.join(FORMATS)}")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r}; this toolkit reads "
                              f"version {FORMAT_VERSION} (export the checkpoint again)")
    files = manifest.get("files")
    needed = [*(manifest.get("graphs") or {}).values(),
              *(manifest.get("tokenizers") or {}).values()]
    if not isinstance(files, dict) or not needed or any(n not in files for n in needed):
        raise CheckpointError(f"{path}: incomplete manifest (graphs, tokenizers and files "
                              "must list every file)")
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{path}: {name!r} is not a file name in the directory")
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{directory}: {name} is missing (listed in {MANIFEST}); "
                                  "export the checkpoint again")
        if not isinstance(entry, dict) or sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"{file}: sha256 differs from {MANIFEST} (changed or "
                                  "corrupt); export the checkpoint again")
    return manifest
