"""What the programs that use a trained model share (translate, evaluate, caption and
the server): the device, the number of decoding workers and their threads, lists given
as one value or many, and files read or written whole."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from nmt.core.errors import ConfigError, DataError
from nmt.data.corpus import read_lines, read_stream


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device}, but no CUDA device is available here; "
                          "use device=cpu")
    return device


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | os.PathLike):
        return [str(value)]
    return [str(v) for v in value]


def input_lines(path: str) -> Iterator[str]:
    """Lines of a file, or of stdin for "-"; empty inputs are fine (empty output)."""
    if path == "-":
        return read_stream(sys.stdin.buffer, "<stdin>", allow_empty=True)
    if not Path(path).is_file():
        raise DataError(f"{path}: input file not found")
    return read_lines(path, allow_empty=True)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[IO[str]]:
    """Write to ``path`` through a temporary file renamed at the end; "-" is stdout."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"output={path} is a directory; give a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            yield f
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def resolve_workers(workers: int | None, device: str, sampling: bool = False) -> int:
    """Batches decoded at once: the configured number, or (null) 2 on a CPU with two or
    more threads, else 1. A GPU decodes one batch at a time, and so does sampling (one
    random generator): it keeps all threads."""
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive integer (or null), got {workers!r}")
    if not device.startswith("cpu") or sampling:
        return 1
    return workers or min(2, torch.get_num_threads())


_ALL_THREADS: list[int] = []  # torch's thread count before the first share_threads


def share_threads(workers: int) -> None:
    """Give each of ``workers`` decoding threads its share of torch's threads.

    Process-wide, so only command-line entry points call it, before translating: the
    translator's worker threads take this setting when they start. Shares are of the
    count before the first call, so calling it again (evaluate.run in a loop) does not
    halve the threads again.
    """
    if not _ALL_THREADS:
        _ALL_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(max(1, _ALL_THREADS[0] // workers))
