"""Encoded parallel data as torch sees it: a memory-mapped split (nmt/data/store.py has
the format on disk) as a Dataset, and padded batches.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.data.filters import CleanReport
from nmt.data.store import SplitArrays

log = logging.getLogger(__name__)

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
        arrays = SplitArrays(directory)
        self.directory, self.meta = arrays.directory, arrays.meta
        self.src_ids, self.src_offsets = arrays.src_ids, arrays.src_offsets
        self.tgt_ids, self.tgt_offsets = arrays.tgt_ids, arrays.tgt_offsets
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
