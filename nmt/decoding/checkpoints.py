"""Checkpoints on disk: their file names in a run's ``checkpoints/`` folder (written by
training, found again by averaging and resuming) and ``load_checkpoint``, which every
program that reads a checkpoint goes through."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from nmt.core.errors import CheckpointError

LAST = "last.ckpt"
# The names of the other checkpoints in checkpoints/ (ModelCheckpoint templates; no "=" in
# them, for Hydra overrides), and the patterns that find them again (averaging).
BEST = "best-epoch{epoch:02d}-step{step}"  # callbacks.keep_best, by callbacks.monitor
RECENT = "epoch{epoch:02d}-step{step}"  # callbacks.keep_last, the newest
BEST_GLOB, RECENT_GLOB = "best-*.ckpt", "epoch*.ckpt"


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """torch.load with weights_only=True, and a clear error for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a checkpoint of this toolkit "
                              "(no state_dict and hyper_parameters)")
    tokenizers = ckpt.get("tokenizers") or {}
    if not tokenizers.get("tgt"):  # a captioning model has no source tokenizer
        raise CheckpointError(f"{path}: the checkpoint carries no SentencePiece models")
    return ckpt


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename, flushed to disk.

    On any OSError (disk full, no permission) the temporary file is removed, ``path``
    keeps its previous content, and a CheckpointError names the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f"; the previous {path.name} is intact" if path.exists() else ""
        raise CheckpointError(f"cannot write checkpoint {path}: "
                              f"{e.strerror or type(e).__name__}{kept}") from None
