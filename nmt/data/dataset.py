"""Encoded parallel data: encode once, store ids on disk, memory-map them afterwards.

One split is stored in a directory of its own:

    src.ids, tgt.ids            all token ids of one side, concatenated (raw binary)
    src.offsets.npy, ...        int64, n + 1 entries: example i is ids[off[i]:off[i + 1]]
    lines.npy                   original line number of each kept example
    meta.json                   counts, dtype, cleaning report

The directory is written under a temporary name and renamed when complete, so an
interrupted run never leaves a half-written cache behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.data.corpus import CleanConfig, CleanReport, ParallelFiles, read_parallel
from nmt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_LINES = 200_000


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


@dataclass
class EncodeStats:
    sentences: int
    seconds: float


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
        self.src_offsets = np.load(self.directory / "src.offsets.npy")
        self.tgt_offsets = np.load(self.directory / "tgt.offsets.npy")
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
        return CleanReport(**{k: v for k, v in self.meta["clean"].items() if k != "dropped"})


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


def encode_split(files: ParallelFiles, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 out_dir: str | os.PathLike, clean: CleanConfig | None = None,
                 chunk_lines: int = CHUNK_LINES) -> EncodeStats:
    """Encode both sides of a split into ``out_dir``; with ``clean``, filter pairs.

    Streams the files in chunks of ``chunk_lines`` pairs, so memory holds one chunk
    of text at a time.
    """
    out_dir = Path(out_dir)
    vocab = max(src_tok.vocab_size, tgt_tok.vocab_size)
    dtype = np.dtype(np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report = CleanReport()
    src_lens: list[np.ndarray] = []
    tgt_lens: list[np.ndarray] = []
    kept_lines: list[np.ndarray] = []
    start = time.perf_counter()
    try:
        with open(tmp / "src.ids", "wb") as src_out, open(tmp / "tgt.ids", "wb") as tgt_out:
            pairs = read_parallel(files.src, files.tgt)
            line = 0
            while True:
                chunk = list(islice(pairs, chunk_lines))
                if not chunk:
                    break
                src_ids = src_tok.encode([s for s, _ in chunk])
                tgt_ids = tgt_tok.encode([t for _, t in chunk])
                idx = _kept(src_ids, tgt_ids, clean, report)
                kept_lines.append(idx + line + 1)
                line += len(chunk)
                for ids, out, lens in ((src_ids, src_out, src_lens), (tgt_ids, tgt_out, tgt_lens)):
                    lens.append(_write_ids([ids[k] for k in idx], out, dtype))
        report.kept = report.total - report.dropped
        for side, lens in (("src", src_lens), ("tgt", tgt_lens)):
            offsets = np.zeros(report.kept + 1, dtype=np.int64)
            np.cumsum(np.concatenate(lens), out=offsets[1:])
            np.save(tmp / f"{side}.offsets.npy", offsets)
        np.save(tmp / "lines.npy", np.concatenate(kept_lines).astype(np.int64))
        meta = {"format": FORMAT_VERSION, "dtype": dtype.name, "examples": report.kept,
                "src": str(files.src), "tgt": str(files.tgt), "clean": report.to_dict(),
                "src_tokenizer": src_tok.digest, "tgt_tokenizer": tgt_tok.digest}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return EncodeStats(report.total, time.perf_counter() - start)


def _kept(src_ids: list[list[int]], tgt_ids: list[list[int]], clean: CleanConfig | None,
          report: CleanReport) -> np.ndarray:
    """Positions in the chunk of the pairs ``clean`` keeps (all without it), ascending;
    counts the chunk's pairs and the dropped ones, by reason, in ``report``."""
    keep = np.ones(len(src_ids), dtype=bool)
    if clean is not None:
        for k, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True)):
            why = clean.reason(len(s), len(t))
            if why is not None:
                keep[k] = False
                setattr(report, why, getattr(report, why) + 1)
    report.total += len(src_ids)
    return np.flatnonzero(keep)


def _write_ids(kept: list[list[int]], out: BinaryIO, dtype: np.dtype) -> np.ndarray:
    """Append the sequences' ids to ``out``, concatenated; return their lengths (int64)."""
    lengths = np.fromiter(map(len, kept), dtype=np.int64, count=len(kept))
    flat = np.fromiter(chain.from_iterable(kept), dtype=dtype, count=int(lengths.sum()))
    out.write(flat.tobytes())
    return lengths
