"""Checkpoint averaging: the mean of the weights of several checkpoints of one model, saved
as a checkpoint that every tool (translate.py, evaluate.py, caption.py, the Translator)
loads like any other.

    python average.py run_dir=RUN last=5 output=avg.ckpt  # the 5 newest (callbacks.keep_last)
    python average.py run_dir=RUN best=5 output=avg.ckpt  # the 5 best (callbacks.keep_best)
    python average.py inputs=[a.ckpt,b.ckpt] output=avg.ckpt

The mean of the last checkpoints of a run smooths out the noise of the last updates and
usually scores a little better than any one of them (Junczys-Dowmunt et al., 2016;
Vaswani et al., 2017). Only checkpoints of one model average: the same architecture and
options and the same vocabularies (SentencePiece models); anything else is refused,
naming both files. Floating-point tensors are averaged in float64 and cast back to their
type; other tensors (counters) come from the newest checkpoint (the highest step). The
output is the newest checkpoint with the averaged weights, its inputs' paths under
``averaged_from``, and no training state (optimizer, scheduler, loops, callbacks): it
translates and evaluates, but cannot be resumed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.core.errors import CheckpointError, ConfigError
from nmt.core.metrics import MONITORS
from nmt.decoding.checkpoints import BEST_GLOB, RECENT_GLOB, atomic_torch_save, load_checkpoint
from nmt.model import model_from_checkpoint

log = logging.getLogger(__name__)

# What the average keeps of the newest checkpoint besides the weights: what the tools read.
KEPT = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name",
        "hyper_parameters", "model_record", "tokenizers", "shortlist", "languages")


# -- choosing the checkpoints of a run -------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """A checkpoint of a run: its step and, for a best one, its score by ``monitor``."""

    path: Path
    step: int
    monitor: str | None = None
    score: float | None = None


def select_last(run_dir: str | os.PathLike, n: int) -> list[Path]:
    """The ``n`` checkpoints with the highest steps among those ``callbacks.keep_last``
    kept in ``run_dir/checkpoints`` (not last.ckpt: a copy saved at any time), oldest
    first."""
    saved = _saved(run_dir, RECENT_GLOB, "last", n, "keep_last")
    return [s.path for s in sorted(saved, key=lambda s: s.step)[-n:]]


def select_best(run_dir: str | os.PathLike, n: int) -> list[Path]:
    """The ``n`` best checkpoints by the score each was saved with (the run's
    ``callbacks.monitor``) among those ``callbacks.keep_best`` kept, oldest first."""
    saved = _saved(run_dir, BEST_GLOB, "best", n, "keep_best")
    monitors = sorted({str(s.monitor) for s in saved})
    if len(monitors) > 1:
        raise ConfigError(f"best={n}: the checkpoints of {Path(run_dir) / 'checkpoints'} were "
                          f"scored by different metrics ({', '.join(monitors)}); choose them "
                          "with inputs=[...]")
    sign = -1 if MONITORS[monitors[0]] == "max" else 1
    # The best first; of equal scores, the newer.
    ranked = sorted(saved, key=lambda s: (sign * (s.score or 0.0), -s.step))
    return [s.path for s in sorted(ranked[:n], key=lambda s: s.step)]


def _saved(run_dir: str | os.PathLike, pattern: str, option: str, n: int, keep: str
           ) -> list[Saved]:
    """The checkpoints of ``run_dir/checkpoints`` named ``pattern``, one per step (a
    step saved twice, name-v1.ckpt by a run resumed from an earlier checkpoint: the
    newer file); a ConfigError unless there are ``n`` at least."""
    _check_count(option, n)
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        raise ConfigError(f"run_dir={run_dir}: no checkpoints/ folder in it; give the "
                          "directory of a training run")
    by_step: dict[int, Saved] = {}
    for path in sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime):
        saved = _read_saved(path, scored=option == "best")
        by_step[saved.step] = saved
    if len(by_step) < n:
        raise ConfigError(f"{option}={n}: {folder} holds {len(by_step)} checkpoint(s) of "
                          f"callbacks.{keep} ({pattern}); train with callbacks.{keep}={n} "
                          "or more, or name the checkpoints with inputs=[...]")
    return list(by_step.values())


def _read_saved(path: Path, scored: bool) -> Saved:
    ckpt = load_checkpoint(path)
    step = int(ckpt.get("global_step", 0))
    if not scored:
        return Saved(path, step)
    # The state of the ModelCheckpoint that saved this file, as it was when it did.
    for key, state in (ckpt.get("callbacks") or {}).items():
        if (key.startswith("ModelCheckpoint") and state.get("monitor") in MONITORS
                and state.get("current_score") is not None):
            return Saved(path, step, state["monitor"], float(state["current_score"]))
    raise CheckpointError(f"{path}: records no validation score (no ModelCheckpoint state "
                          "of a callbacks.monitor metric); name the checkpoints with "
                          "inputs=[...]")


def _check_count(option: str, n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{option} must be a positive integer (how many checkpoints), "
                          f"got {n!r}")


# -- averaging -------------------------------------------------------------------------------


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The checkpoint whose weights are the mean of those of ``paths`` (see the module
    docstring); a CheckpointError names two files that are not of one model."""
    if not paths:
        raise ConfigError("no checkpoints to average")
    files = [Path(p) for p in paths]
    sums: dict[str, torch.Tensor] = {}
    first: tuple[Path, dict[str, Any]] | None = None
    newest: dict[str, Any] = {}
    newest_ties: dict[str, str] = {}
    for path in files:  # one at a time: memory for two models, whatever their number
        ckpt = load_checkpoint(path)
        identity = {"record": model_from_checkpoint(ckpt, str(path)).record,
                    "tokenizers": ckpt["tokenizers"], "names": set(ckpt["state_dict"])}
        if first is None:
            first = (path, identity)
        else:
            _check_same(first[0], first[1], path, identity)
        state = ckpt["state_dict"]
        ties = _ties(state)
        for key, value in state.items():
            if ties[key] == key and value.is_floating_point():
                total = value.to(torch.float64)
                sums[key] = total if key not in sums else sums[key] + total
        if not newest or ckpt.get("global_step", 0) >= newest.get("global_step", 0):
            newest = {k: ckpt[k] for k in KEPT if k in ckpt}
            newest["state_dict"], newest_ties = state, ties
    averaged: dict[str, torch.Tensor] = {}
    for key, value in newest["state_dict"].items():
        if newest_ties[key] != key:
            averaged[key] = averaged[newest_ties[key]]
        elif key in sums:
            averaged[key] = (sums[key] / len(files)).to(value.dtype)
        else:
            averaged[key] = value
    return {**newest, "state_dict": averaged,
            "averaged_from": [str(p.resolve()) for p in files]}


def _ties(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each name -> the first name of its tensor. Tied weights (the target embedding and
    the output layer) are one tensor under two names, and stay one."""
    first: dict[tuple[Any, ...], str] = {}
    return {key: first.setdefault((value.untyped_storage().data_ptr(), value.storage_offset(),
                                   tuple(value.shape), value.stride()), key)
            for key, value in state.items()}


def _check_same(path_a: Path, a: dict[str, Any], path_b: Path, b: dict[str, Any]) -> None:
    """A CheckpointError saying what differs, unless ``a`` and ``b`` are of one model."""
    ra, rb = a["record"], b["record"]
    vocab = [f"{k} {ra[k]} vs {rb[k]}" for k in ("src_vocab_size", "tgt_vocab_size")
             if ra[k] != rb[k]]
    if not vocab:
        vocab = [f"the {name} SentencePiece models differ"
                 for side, name in (("src", "source"), ("tgt", "target"))
                 if a["tokenizers"].get(side) != b["tokenizers"].get(side)]
    ca, cb = ra["config"], rb["config"]
    arch = [f"{k} {ca.get(k)!r} vs {cb.get(k)!r}" for k in sorted(ca.keys() | cb.keys())
            if ca.get(k) != cb.get(k)]
    arch += [f"{k} {ra.get(k)!r} vs {rb.get(k)!r}" for k in ("architecture", "pad_id")
             if ra.get(k) != rb.get(k)]
    if not arch and a["names"] != b["names"]:
        arch = ["different weight names"]
    what = ([f"architectures ({', '.join(arch)})"] if arch else []) + (
        [f"vocabularies ({', '.join(vocab)})"] if vocab else [])
    if what:
        raise CheckpointError(f"{path_a} and {path_b} cannot be averaged: different "
                              f"{' and '.join(what)}")


# -- the command -----------------------------------------------------------------------------


def checkpoints_to_average(cfg: Any) -> list[Path]:
    """The checkpoints that ``last``/``best`` with ``run_dir``, or ``inputs``, name."""
    given = [name for name in ("last", "best", "inputs") if cfg.get(name) not in (None, "", [])]
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise ConfigError(f"give one of last=N or best=N (with run_dir=RUN), or "
                          f"inputs=[a.ckpt,b.ckpt]{got}")
    [mode] = given
    if mode == "inputs":
        if cfg.get("run_dir"):
            raise ConfigError("run_dir goes with last=N or best=N; inputs=[...] names the "
                              "checkpoints itself")
        inputs = [cfg.inputs] if isinstance(cfg.inputs, str) else cfg.inputs
        paths = [Path(str(p)) for p in inputs]
        for path in paths:
            if not path.is_file():
                raise CheckpointError(f"{path}: checkpoint not found")
        resolved = [p.resolve() for p in paths]
        for i, path in enumerate(paths):
            if resolved[i] in resolved[:i]:
                raise ConfigError(f"inputs: {path} is named twice")
        return paths
    if not cfg.get("run_dir"):
        raise ConfigError(f"{mode}={cfg[mode]} needs run_dir=RUN: the training run whose "
                          "checkpoints to average")
    select = select_last if mode == "last" else select_best
    return select(cfg.run_dir, cfg[mode])


def run(cfg: Any) -> dict[str, Any]:
    """average.py: choose the checkpoints, average them, write ``output`` atomically."""
    if not cfg.get("output"):
        raise ConfigError("give output=FILE: where to write the averaged checkpoint")
    paths = checkpoints_to_average(cfg)
    output = Path(cfg.output)
    if output.resolve() in {p.resolve() for p in paths}:
        raise ConfigError(f"output={output} is one of the checkpoints to average; write the "
                          "average to another file")
    log.info("averaging %d checkpoint(s): %s", len(paths), ", ".join(map(str, paths)))
    averaged = average_checkpoints(paths)
    atomic_torch_save(averaged, output)
    log.info("wrote %s", output)
    return {"output": str(output), "averaged_from": averaged["averaged_from"],
            "global_step": averaged.get("global_step")}
