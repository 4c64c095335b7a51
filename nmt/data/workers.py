"""Worker processes for preparation (encoding, co-occurrence counts).

Spawned, not forked: the caller may hold torch's thread pools, which fork breaks. A
spawned worker imports what its task needs, and nothing more: ``WORKER_ENV`` tells
nmt/__init__.py to skip torch, torchvision and the config schema (2-4 s of start-up a
worker otherwise), so the modules a worker runs must not import torch themselves
(nmt/data/store.py and not nmt/data/dataset.py; tests/test_workers.py checks).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Any

WORKER_ENV = "NMT_DATA_WORKER"


def all_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


@contextmanager
def worker_pool(processes: int, initializer: Callable[..., Any] | None = None,
                initargs: tuple[Any, ...] = ()) -> Iterator[Pool]:
    """A pool of ``processes`` spawned workers that import only what their tasks need."""
    context = multiprocessing.get_context("spawn")
    before = os.environ.get(WORKER_ENV)
    os.environ[WORKER_ENV] = "1"  # inherited by the workers, which start in Pool()
    try:
        pool = context.Pool(processes, initializer=initializer, initargs=initargs)
    finally:
        if before is None:
            del os.environ[WORKER_ENV]
        else:
            os.environ[WORKER_ENV] = before
    with pool:
        yield pool
