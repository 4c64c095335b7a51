"""Encoding a split: its text files in, memory-mappable ids out (nmt/data/store.py has
the format), in ``workers`` processes.

The main process reads both files in chunks of ``CHUNK_LINES`` raw lines and hands
each chunk to a worker, which decodes the text, segments it with the tokenizers,
and applies the filters that need one pair at a time (nmt/data/filters.py). The
main process takes the chunks back in order, drops repeated pairs (which needs all
the chunks before), and appends the kept ids to the output. So the output is the
same, byte for byte, with any number of workers; at most two chunks a worker are in
flight, so memory does not grow with the corpus. A split of one chunk is encoded in
the main process (starting workers costs about a second).

The output is written under a temporary name and renamed when complete: an
interrupted run leaves nothing behind and the next one starts again.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from nmt.core.errors import DataError
from nmt.data.corpus import ParallelFiles, decode_line, misaligned, open_binary, read_raw
from nmt.data.filters import KEEP, REASONS, CleanConfig, CleanReport, Deduplicator, pair_hashes
from nmt.data.progress import Progress
from nmt.data.store import SplitWriter
from nmt.data.tokenizer import Tokenizer
from nmt.data.workers import worker_pool

CHUNK_LINES = 50_000
DUPLICATE = REASONS.index("duplicate") + 1


@dataclass
class EncodeStats:
    sentences: int
    seconds: float


@dataclass(frozen=True)
class Job:
    """What a worker needs to encode chunks: sent to it once, when it starts."""

    src_model: bytes
    tgt_model: bytes | None  # None: the source's (a joint tokenizer)
    names: tuple[str, str]  # the files, for errors
    dtype: str
    clean: CleanConfig | None
    languages: tuple[str, str] | None  # (src, tgt) for the language filter


@dataclass
class Chunk:
    first_line: int  # 1-based line number of the chunk's first pair
    src: list[bytes]
    tgt: list[bytes]


@dataclass
class Encoded:
    """A chunk encoded: concatenated ids and lengths per side, each pair's filter code
    (filters.KEEP or a reason) and its hash (for the duplicate filter)."""

    first_line: int
    ids: tuple[np.ndarray, np.ndarray]
    lengths: tuple[np.ndarray, np.ndarray]
    codes: np.ndarray
    hashes: np.ndarray | None


class ChunkEncoder:
    def __init__(self, job: Job) -> None:
        self.job = job
        src = Tokenizer(job.src_model)
        self.tokenizers = (src, src if job.tgt_model is None else Tokenizer(job.tgt_model))

    def __call__(self, chunk: Chunk) -> Encoded:
        job = self.job
        src, tgt = ([decode_line(raw, name, chunk.first_line + k) for k, raw in enumerate(lines)]
                    for lines, name in ((chunk.src, job.names[0]), (chunk.tgt, job.names[1])))
        src_ids, tgt_ids = (tok.encode(side, num_threads=1)
                            for tok, side in zip(self.tokenizers, (src, tgt), strict=True))
        src_len, tgt_len = (np.fromiter(map(len, side), dtype=np.int64, count=len(side))
                            for side in (src_ids, tgt_ids))
        flat = tuple(np.fromiter(chain.from_iterable(ids), dtype=job.dtype, count=int(n.sum()))
                     for ids, n in ((src_ids, src_len), (tgt_ids, tgt_len)))
        if job.clean is None:
            return Encoded(chunk.first_line, flat, (src_len, tgt_len),  # type: ignore[arg-type]
                           np.zeros(len(src), dtype=np.int8), None)
        codes = job.clean.codes(src, tgt, src_len, tgt_len, job.languages)
        hashes = pair_hashes(src, tgt) if job.clean.dedup else None
        return Encoded(chunk.first_line, flat, (src_len, tgt_len), codes,  # type: ignore[arg-type]
                       hashes)


_WORKER: dict[str, ChunkEncoder] = {}  # a worker process's encoder


def _start_worker(job: Job) -> None:
    _WORKER["encoder"] = ChunkEncoder(job)


def _encode_in_worker(chunk: Chunk) -> Encoded:
    return _WORKER["encoder"](chunk)


def _chunks(files: ParallelFiles, size: int) -> Iterator[tuple[Chunk, float]]:
    """The files' pairs in chunks of ``size`` raw lines, with the share of the source
    file read so far (by bytes: a gzip file's compressed bytes)."""
    total = max(1, files.src.stat().st_size)
    with open_binary(files.src) as fs, open_binary(files.tgt) as ft:
        raw = getattr(fs, "fileobj", None) or fs  # a GzipFile's compressed stream
        line = 1
        while True:
            src = read_raw(fs, size, str(files.src), line - 1)
            tgt = read_raw(ft, size, str(files.tgt), line - 1)
            if len(src) != len(tgt):
                more = (sum(1 for _ in fs), sum(1 for _ in ft))
                raise DataError(misaligned(files.src, line - 1 + len(src) + more[0],
                                           files.tgt, line - 1 + len(tgt) + more[1]))
            if not src:
                if line == 1:
                    raise DataError(f"{files.src}: the file is empty")
                return
            yield Chunk(line, src, tgt), raw.tell() / total
            line += len(src)


def encoded_chunks(files: ParallelFiles, job: Job, workers: int, size: int
                   ) -> Iterator[tuple[Encoded, float]]:
    """Every chunk of the files encoded, in order, with the share of the input read."""
    chunks = _chunks(files, size)
    first = next(chunks, None)
    if first is None:
        return
    if workers <= 1 or len(first[0].src) < size:
        encoder = ChunkEncoder(job)
        for chunk, fraction in chain([first], chunks):
            yield encoder(chunk), fraction
        return
    with worker_pool(workers, _start_worker, (job,)) as pool:
        pending: deque[tuple[Any, float]] = deque()
        for chunk, fraction in chain([first], chunks):
            pending.append((pool.apply_async(_encode_in_worker, (chunk,)), fraction))
            if len(pending) >= 2 * workers:
                result, read = pending.popleft()
                yield result.get(), read
        while pending:
            result, read = pending.popleft()
            yield result.get(), read


def encode_split(files: ParallelFiles, src_tok: Tokenizer, tgt_tok: Tokenizer,
                 out_dir: str | os.PathLike, clean: CleanConfig | None = None, workers: int = 1,
                 languages: tuple[str, str] | None = None, chunk_lines: int = CHUNK_LINES
                 ) -> EncodeStats:
    """Encode both sides of a split into ``out_dir`` (see the module docstring); with
    ``clean``, filter the pairs (``languages``: (src, tgt) for its language filter)."""
    out_dir = Path(out_dir)
    vocab = max(src_tok.vocab_size, tgt_tok.vocab_size)
    dtype = np.dtype(np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32)
    job = Job(src_tok.model_proto, None if tgt_tok is src_tok else tgt_tok.model_proto,
              (str(files.src), str(files.tgt)), dtype.name, clean, languages)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report, dedup = CleanReport(), Deduplicator() if clean and clean.dedup else None
    progress = Progress(f"encoding {out_dir.name} ({workers} worker{'s' * (workers > 1)})")
    writer = SplitWriter(tmp)
    try:
        for enc, fraction in encoded_chunks(files, job, workers, chunk_lines):
            keep = enc.codes == KEEP
            if dedup is not None:
                assert enc.hashes is not None
                first = dedup.first(enc.hashes, keep)
                enc.codes[keep & ~first] = DUPLICATE
                keep &= first
            report.count(enc.codes)
            writer.add(enc.ids, enc.lengths, keep, enc.first_line)
            progress.update(len(keep), fraction)
        writer.finish({"dtype": dtype.name, "examples": report.kept,
                       "src": str(files.src), "tgt": str(files.tgt), "clean": report.to_dict(),
                       "src_tokenizer": src_tok.digest, "tgt_tokenizer": tgt_tok.digest})
        if out_dir.is_dir() and not (out_dir / "meta.json").is_file():
            shutil.rmtree(out_dir, ignore_errors=True)  # a stale, unfinished split
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process (rank, node) encoded the same split first
            if not (out_dir / "meta.json").is_file():
                raise
    finally:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return EncodeStats(report.total, progress.close())
