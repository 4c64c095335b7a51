"""Loggers that survive a crash and a resume.

Lightning's CSV logger deletes ``metrics.csv`` when it starts in a folder that has
one, and writes it every 100 steps. ``ContinuedCSVLogger`` writes every step (a
killed run loses at most the row of the step in flight) and, when a run resumes from
a checkpoint of step k, keeps the rows of steps before k and appends to them: the
log of a run that was stopped and resumed is the log of one run. (A step's training
row and an epoch's validation row carry the step number of the batch they follow,
so a checkpoint of step k is followed by rows of step k and later.)
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV log (no file: none)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _complete_lines(path: Path) -> list[str]:
    """The lines of a file, less an unfinished last one (a write cut by a kill)."""
    lines = path.read_text().splitlines(keepends=True)
    return lines if not lines or lines[-1].endswith("\n") else lines[:-1]


def _write_rows(path: Path, keys: list[str], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._resume_step is None:  # a new run: start afresh, as Lightning does
            super()._check_log_dir_exists()
            return
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        reader = csv.DictReader(_complete_lines(path))
        keys = list(reader.fieldnames or [])
        rows = [r for r in reader if int(float(r.get("step") or 0)) < self._resume_step]
        _write_rows(path, keys, rows)
        self.metrics_keys = keys

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the file in place when a new metric appears: a kill then
        # would lose the whole log. Through a temporary file instead.
        path = Path(self.metrics_file_path)
        _write_rows(path, fieldnames, list(csv.DictReader(_complete_lines(path))))


class ContinuedCSVLogger(CSVLogger):
    """A CSVLogger that writes every step and, given ``resume_step``, continues the rows
    of an existing log that come before that step."""

    def __init__(self, save_dir: str | os.PathLike, resume_step: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(Path(save_dir), flush_logs_every_n_steps=1, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if not isinstance(self._experiment, ExperimentWriter):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment
