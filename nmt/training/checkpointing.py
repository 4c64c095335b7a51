"""Crash-safe training: complete checkpoints, a resumable ``last.ckpt`` at every moment,
and preemption (SIGTERM, SIGINT) that saves before it stops.

- ``AtomicCheckpointIO`` writes every checkpoint to a temporary file in the same
  folder, flushes it to disk and renames it over the old one: a kill or a full disk
  during the write leaves the previous file intact.
- ``ResumableCheckpoint`` saves ``last.ckpt`` at the end of every epoch, every
  ``every_n_minutes`` of training and every ``every_n_train_steps`` steps, and when
  a SIGTERM or SIGINT arrives (then training stops with ``Preempted``). Each
  checkpoint also carries the random number generators' states, so that a resumed
  run draws the same dropout masks as one that never stopped. It is a Lightning
  ``Checkpoint``: Lightning runs those after every other callback, in the order given,
  so placed after the ModelCheckpoints it saves the epoch's files in their state
  (a resumed run then keeps, and deletes, the right ones).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nmt.decoding.checkpoints import LAST, atomic_torch_save

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum: int, path: Path, step: int) -> None:
        self.signum, self.path, self.step = signum, path, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"resumable checkpoint: {path}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with ``atomic_torch_save`` for every save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


# -- random number generators, as plain tensors and tuples (loadable with weights_only) ---


def rng_states() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss,
                  gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    # random.setstate wants tuples; a checkpoint may give lists back.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


# -- the callback --------------------------------------------------------------------------


class ResumableCheckpoint(Checkpoint):
    """Keeps ``dirpath/last.ckpt`` resumable and recent; saves and stops on SIGTERM/SIGINT.

    Put it after the ModelCheckpoints: Lightning runs checkpoint callbacks last, in the
    order given, and this one's epoch-end save must carry their updated states.

    Saves at every epoch end, every ``every_n_minutes`` of training (None: never by
    time) and every ``every_n_train_steps`` steps (None: never by steps). Under DDP the
    ranks agree on each decision (one small all-reduce per step), since saving is a
    collective operation.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_minutes: float | None = 10,
                 every_n_train_steps: int | None = None) -> None:
        for name, value in (("every_n_minutes", every_n_minutes),
                            ("every_n_train_steps", every_n_train_steps)):
            if value is not None and not value > 0:
                raise ValueError(f"callbacks.{name} must be positive or null, got {value}")
        self.path = Path(dirpath) / LAST
        self.every_s = None if every_n_minutes is None else every_n_minutes * 60
        self.every_steps = every_n_train_steps
        self.signum: int | None = None
        self._last_save = time.monotonic()
        self._restored_rng: dict[str, Any] | None = None
        self._previous_handlers: dict[int, Any] = {}
        self.active = True

    # -- state carried by every checkpoint (this one's and ModelCheckpoint's) -------------

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_rng = state_dict.get("rng")

    # -- signals ---------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A smoke test writes no checkpoint (fast_dev_run is set at runtime, not in the stubs).
        self.active = not getattr(trainer, "fast_dev_run", False)
        if not self.active:
            return
        # After Lightning installed its own handlers: ours decide what a signal does.
        if self._restored_rng is not None:
            set_rng_states(self._restored_rng)
            self._restored_rng = None
        self._last_save = time.monotonic()
        self.signum = None
        try:
            for signum in SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        except ValueError:  # not the main thread: the caller handles signals itself
            self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            log.warning("received %s: saving %s after this step, then stopping "
                        "(send it again to stop at once)", signal.Signals(signum).name,
                        self.path)
            self.signum = signum
            return
        self._restore_handlers()
        signal.raise_signal(signum)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore_handlers()

    # -- when to save ----------------------------------------------------------------------

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        by_steps = self.every_steps is not None and trainer.global_step % self.every_steps == 0
        by_time = self.every_s is not None and time.monotonic() - self._last_save >= self.every_s
        self._save_if(trainer, by_steps or by_time)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's validation: the best score and early-stopping counters included.
        self._save_if(trainer, True)

    def _save_if(self, trainer: L.Trainer, due: bool) -> None:
        if not self.active:
            return
        flags = torch.tensor([float(due), float(self.signum is not None)])
        if trainer.world_size > 1:  # every rank takes the same decision
            flags = trainer.strategy.reduce(flags.to(trainer.strategy.root_device),
                                            reduce_op="max").cpu()
        due, signalled = bool(flags[0]), bool(flags[1])
        if not (due or signalled):
            return
        # Full state (optimizer, loops, callbacks): what resuming needs. Saying so also
        # keeps Lightning from logging that it defaulted to it at every save.
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_save = time.monotonic()
        if signalled:
            raise Preempted(self.signum or signal.SIGTERM, self.path, trainer.global_step)
