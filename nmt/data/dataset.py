"""Encoded parallel data: encode once, store ids on disk, memory-map them afterwards.

One split is stored in a directory of its own:

    src.ids, tgt.ids            all token ids of one side, concatenated (raw binary)
    src.offsets.npy, ...        int64, n + 1 entries: example i is ids[off[i]:off[i + 1]]
    lines.npy                   original line number of each kept example
    meta.json                   counts, dtype, cleaning report

nmt/data/encode.py writes it (under a temporary name, renamed when complete, so an
interrupted run never leaves a half-written cache behind).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.data.filters import CleanReport

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class Batch(NamedTuple):
    """A padded batch; Lightning moves NamedTuples of tensors between devices itself."""

    src: torch.Tensor  # (B, S) source ids ending in EOS, right-padded with PAD_ID
    src_lengths: torch.Tensor  # (B,) real source lengths, EOS included
    tgt_in: torch.Tensor  # (B, T) BOS + target ids, padded
    tgt_out: torch.Tensor  # (B, T) target ids + EOS, padded
    indices: torch.Tensor  # (B,) example index in its split
    # (N,) the source row of each target row when a source has several targets (an image
    # and its captions: the encoder runs once per image); None: row i is source i.
    src_index: torch.Tensor | None = None


class OffsetItems(Dataset):
    """Items (i, src_ids, tgt_ids) from concatenated ids and offsets (``src_ids``,
    ``src_offsets``, ``tgt_ids``, ``tgt_offsets``, set by the subclass)."""

    src_ids: np.ndarray
    src_offsets: np.ndarray
    tgt_ids: np.ndarray
    tgt_offsets: np.ndarray

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        so, to = self.src_offsets, self.tgt_offsets
        return i, self.src_ids[so[i]:so[i + 1]], self.tgt_ids[to[i]:to[i + 1]]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        return [self[i] for i in indices]


class ParallelDataset(OffsetItems):
    """Memory-mapped encoded split; item i is (i, src_ids, tgt_ids) without BOS/EOS."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        dtype = np.dtype(self.meta["dtype"])
        # Memory-mapped, as the ids: the processes of one machine share one copy.
        self.src_offsets = np.load(self.directory / "src.offsets.npy", mmap_mode="r")
        self.tgt_offsets = np.load(self.directory / "tgt.offsets.npy", mmap_mode="r")
        self.src_ids = _memmap(self.directory / "src.ids", dtype)
        self.tgt_ids = _memmap(self.directory / "tgt.ids", dtype)
        self.src_lengths = np.diff(self.src_offsets)
        self.tgt_lengths = np.diff(self.tgt_offsets)

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def line_numbers(self) -> np.ndarray:
        """1-based line number in the original files of each example."""
        return np.load(self.directory / "lines.npy")

    @property
    def clean_report(self) -> CleanReport:
        return CleanReport.from_dict(self.meta["clean"])


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def collate(examples: list[tuple[int, np.ndarray, np.ndarray]]) -> Batch:
    """Pad a list of (index, src_ids, tgt_ids) into a Batch (EOS/BOS added here)."""
    n = len(examples)
    src_len = np.fromiter((len(s) + 1 for _, s, _ in examples), dtype=np.int64, count=n)
    tgt_len = np.fromiter((len(t) + 1 for _, _, t in examples), dtype=np.int64, count=n)
    src = np.full((n, int(src_len.max())), PAD_ID, dtype=np.int64)
    tgt_in = np.full((n, int(tgt_len.max())), PAD_ID, dtype=np.int64)
    tgt_out = np.full_like(tgt_in, PAD_ID)
    for row, (_, s, t) in enumerate(examples):
        src[row, : len(s)] = s
        src[row, len(s)] = EOS_ID
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1 : len(t) + 1] = t
        tgt_out[row, : len(t)] = t
        tgt_out[row, len(t)] = EOS_ID
    indices = np.fromiter((i for i, _, _ in examples), dtype=np.int64, count=n)
    return Batch(torch.from_numpy(src), torch.from_numpy(src_len), torch.from_numpy(tgt_in),
                 torch.from_numpy(tgt_out), torch.from_numpy(indices))
