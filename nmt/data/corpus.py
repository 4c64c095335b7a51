"""Parallel text: reading and checking (the catalog of known corpora: nmt/data/catalog.py;
which training pairs are kept: nmt/data/filters.py).

A corpus side is a text file (plain or gzip), UTF-8, one sentence a line; line N
of the source side translates line N of the target side. Files are streamed line
by line, never read whole.
"""

from __future__ import annotations

import gzip
import io
import itertools
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


def open_binary(path: Path) -> io.BufferedIOBase:
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
    with open_binary(path) as f:
        yield from read_stream(f, str(path), allow_empty)


def read_stream(f: Iterable[bytes], name: str, allow_empty: bool = False) -> Iterator[str]:
    """``read_lines`` for an open binary stream (e.g. stdin); ``name`` is used in errors."""
    n = 0
    try:
        for raw in f:
            n += 1
            yield decode_line(raw, name, n)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{name}, after line {n}: cannot read the file ({e})") from None
    if n == 0 and not allow_empty:
        raise DataError(f"{name}: the file is empty")


def decode_line(raw: bytes, name: str, n: int) -> str:
    """Line ``n`` (1-based) of file ``name`` as text: UTF-8, without its line ending and,
    on line 1, without a byte order mark; DataError for invalid UTF-8."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name}, line {n}: invalid UTF-8 (byte {e.start + 1} of the line: "
            f"{raw[e.start:e.start + 1]!r}); the file must be UTF-8 text"
        ) from None
    if n == 1 and line.startswith("\ufeff"):
        line = line[1:]
    return line.rstrip("\r\n")


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike
                  ) -> Iterator[tuple[str, str]]:
    """Yield aligned (source, target) line pairs from two files.

    Raises DataError with both line counts if the two sides differ in length.
    """
    return zip_aligned(read_lines(src_path), read_lines(tgt_path),
                       lambda n_src, n_tgt: misaligned(src_path, n_src, tgt_path, n_tgt))


def read_raw(f: Iterator[bytes], n: int, name: str, after: int) -> list[bytes]:
    """The next ``n`` (or fewer, at the end) raw lines of an open binary stream, read at
    C speed; read errors raise DataError naming ``name`` and the ``after`` lines before."""
    try:
        return list(itertools.islice(f, n))
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{name}, after line {after}: cannot read the file ({e})") from None


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


def misaligned(src_path: str | os.PathLike, n_src: int, tgt_path: str | os.PathLike,
               n_tgt: int) -> str:
    return (
        f"source and target differ in length: {src_path} has {n_src} lines but "
        f"{tgt_path} has {n_tgt} lines; line N of one side must translate line N of the other"
    )


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
