"""Parallel text: reading, checking and cleaning (the catalog of known corpora:
nmt/data/catalog.py).

A corpus side is a text file (plain or gzip), UTF-8, one sentence a line; line N
of the source side translates line N of the target side. Files are streamed line
by line, never read whole.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nmt.core.errors import DataError

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
DATA_DIR_ENV = "NMT_DATA_DIR"

T = TypeVar("T")
U = TypeVar("U")


def _open_binary(path: Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, transparently un-gzipping it.

    Gzip is detected from the file's first bytes, not its name.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_lines(path: str | os.PathLike, allow_empty: bool = False) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file (plain or gzip) without line endings.

    Raises DataError naming the file (and line) for a missing file, invalid UTF-8,
    a corrupt gzip stream, or an empty file.
    """
    path = Path(path)
    with _open_binary(path) as f:
        yield from read_stream(f, str(path), allow_empty)


def read_stream(f: Iterable[bytes], name: str, allow_empty: bool = False) -> Iterator[str]:
    """``read_lines`` for an open binary stream (e.g. stdin); ``name`` is used in errors."""
    n = 0
    try:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{name}, line {n}: invalid UTF-8 (byte {e.start + 1} of the line: "
                    f"{raw[e.start:e.start + 1]!r}); the file must be UTF-8 text"
                ) from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line.rstrip("\r\n")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{name}, after line {n}: cannot read the file ({e})") from None
    if n == 0 and not allow_empty:
        raise DataError(f"{name}: the file is empty")


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike
                  ) -> Iterator[tuple[str, str]]:
    """Yield aligned (source, target) line pairs from two files.

    Raises DataError with both line counts if the two sides differ in length.
    """
    return zip_aligned(read_lines(src_path), read_lines(tgt_path),
                       lambda n_src, n_tgt: _misaligned(src_path, n_src, tgt_path, n_tgt))


_END = object()  # zip_aligned's mark for a stream that ended


def zip_aligned(a: Iterator[T], b: Iterator[U], misaligned: Callable[[int, int], str]
                ) -> Iterator[tuple[T, U]]:
    """Pairs of items of two streams that must be as long as each other; when one ends
    first, count the rest of the other and raise DataError(misaligned(len(a), len(b)))."""
    n = 0
    for n, x in enumerate(a, start=1):
        y = next(b, _END)
        if y is _END:
            raise DataError(misaligned(n + sum(1 for _ in a), n - 1))
        yield x, y  # type: ignore[misc]
    rest = sum(1 for _ in b)
    if rest:
        raise DataError(misaligned(n, n + rest))


def _misaligned(src_path: str | os.PathLike, n_src: int, tgt_path: str | os.PathLike,
               n_tgt: int) -> str:
    return (
        f"source and target differ in length: {src_path} has {n_src} lines but "
        f"{tgt_path} has {n_tgt} lines; line N of one side must translate line N of the other"
    )


# --- cleaning --------------------------------------------------------------------------------


@dataclass
class CleanReport:
    """How many training pairs cleaning kept and why it dropped the others."""

    total: int = 0
    kept: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0

    @property
    def dropped(self) -> int:
        return self.empty + self.too_long + self.bad_ratio

    def __str__(self) -> str:
        return (
            f"kept {self.kept} of {self.total} pairs; dropped {self.dropped} "
            f"({self.empty} with an empty side, {self.too_long} longer than max_len, "
            f"{self.bad_ratio} with a length ratio above max_ratio)"
        )

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "kept": self.kept, "dropped": self.dropped,
                "empty": self.empty, "too_long": self.too_long, "bad_ratio": self.bad_ratio}


@dataclass(frozen=True)
class CleanConfig:
    """Filters for training pairs; lengths are counted in subword tokens.

    ``max_len`` or ``max_ratio`` set to None disables that filter.
    """

    drop_empty: bool = True
    max_len: int | None = 100
    max_ratio: float | None = 3.0

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < 1:
            raise DataError(f"clean.max_len must be a positive token count, got {self.max_len}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise DataError(f"clean.max_ratio must be >= 1, got {self.max_ratio}")

    def reason(self, src_len: int, tgt_len: int) -> str | None:
        """Why a pair with these token lengths is dropped, or None to keep it."""
        if src_len == 0 or tgt_len == 0:
            return "empty" if self.drop_empty else None
        if self.max_len is not None and max(src_len, tgt_len) > self.max_len:
            return "too_long"
        if self.max_ratio is not None and max(src_len, tgt_len) > self.max_ratio * min(
            src_len, tgt_len
        ):
            return "bad_ratio"
        return None


@dataclass(frozen=True)
class ParallelFiles:
    """The two sides of one split."""

    src: Path
    tgt: Path
    checksum: str | None = None  # the files' sha256 (catalog corpora)

    def fingerprint(self) -> str:
        """Identity of the files' contents: the known checksum, else path, size and mtime."""
        if self.checksum is not None:
            return self.checksum
        parts = []
        for p in (self.src, self.tgt):
            st = p.stat()
            parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)
