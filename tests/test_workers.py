"""Preparation workers start light: they import numpy and sentencepiece, not torch.

(This file imports nothing heavy itself: the workers import it to find their task.)
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

from nmt.data.workers import WORKER_ENV, worker_pool


def _imports_torch(module: str) -> bool:
    """Run in a worker: import ``module``; is torch imported now?"""
    importlib.import_module(module)
    return "torch" in sys.modules


@pytest.mark.parametrize("module", ["nmt.data.encode", "nmt.data.cooccurrence"])
def test_a_worker_imports_no_torch(module):
    """The modules whose functions the workers run (encoding, counting) leave torch
    out, which saves each worker seconds of start-up."""
    with worker_pool(1) as pool:
        assert pool.apply(_imports_torch, ("nmt",)) is False
        assert pool.apply(_imports_torch, (module,)) is False


def test_the_worker_setting_stays_in_the_workers(monkeypatch):
    """The variable that lightens the workers' imports is not left in this process's
    environment, and a value set before is restored."""
    monkeypatch.delenv(WORKER_ENV, raising=False)
    with worker_pool(1):
        assert WORKER_ENV not in os.environ
    monkeypatch.setenv(WORKER_ENV, "0")
    with worker_pool(1):
        assert os.environ[WORKER_ENV] == "0"
