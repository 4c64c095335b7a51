"""The encoded split on disk: written once by nmt/data/encode.py, memory-mapped after.
numpy only (no torch), so the preparation workers that read or write it start quickly.

One split is stored in a directory of its own:

    src.ids, tgt.ids            all token ids of one side, concatenated (raw binary)
    src.offsets.npy, ...        int64, n + 1 entries: example i is ids[off[i]:off[i + 1]]
    lines.npy                   original line number of each kept example
    meta.json                   counts, dtype, cleaning report

A split is written under a temporary name and renamed when complete, so an
interrupted run never leaves a half-written cache behind.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


class SplitArrays:
    """A stored split's ids and offsets per side, memory-mapped (the processes of one
    machine share one copy), and its meta.json."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.meta: dict[str, Any] = json.loads((self.directory / "meta.json").read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.src_offsets = np.load(self.directory / "src.offsets.npy", mmap_mode="r")
        self.tgt_offsets = np.load(self.directory / "tgt.offsets.npy", mmap_mode="r")
        self.src_ids = _memmap(self.directory / "src.ids", dtype)
        self.tgt_ids = _memmap(self.directory / "tgt.ids", dtype)


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class SplitWriter:
    """Appends pairs to a split directory being written; ``finish`` adds the offsets, the
    line numbers and meta.json."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.open = ExitStack()
        self.files = {name: self.open.enter_context(open(directory / name, "wb"))  # noqa: SIM115
                      for name in ("src.ids", "tgt.ids", "src.lengths", "tgt.lengths", "lines")}

    def add(self, ids: tuple[np.ndarray, np.ndarray], lengths: tuple[np.ndarray, np.ndarray],
            keep: np.ndarray, first_line: int) -> None:
        """Append the kept pairs (bool ``keep``) of a chunk: its ids concatenated per side,
        the pairs' lengths, and the 1-based line number of its first pair."""
        for side, side_ids, side_lengths in zip(("src", "tgt"), ids, lengths, strict=True):
            self.files[f"{side}.ids"].write(side_ids[np.repeat(keep, side_lengths)].tobytes())
            self.files[f"{side}.lengths"].write(side_lengths[keep].tobytes())
        self.files["lines"].write((np.flatnonzero(keep) + first_line).astype(np.int64).tobytes())

    def finish(self, meta: dict[str, Any]) -> None:
        self.close()
        for side in ("src", "tgt"):
            lengths = np.fromfile(self.directory / f"{side}.lengths", dtype=np.int64)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            np.save(self.directory / f"{side}.offsets.npy", offsets)
            (self.directory / f"{side}.lengths").unlink()
        lines = np.fromfile(self.directory / "lines", dtype=np.int64)
        np.save(self.directory / "lines.npy", lines)
        (self.directory / "lines").unlink()
        (self.directory / "meta.json").write_text(json.dumps({"format": FORMAT_VERSION, **meta},
                                                             indent=1))

    def close(self) -> None:
        self.open.close()
