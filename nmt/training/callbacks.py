"""Training callbacks of our own: throughput and training time; BatchNorm statistics
recomputed before validation; a cosine fitted to the run's time limit."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import nn

from nmt.core.errors import ConfigError
from nmt.core.tokens import PAD_ID
from nmt.data.dataset import Batch
from nmt.training.schedules import TimedCosine


class Throughput(L.Callback):
    """Logs ``train/tokens_per_s`` (real tokens, all ranks) and ``val/train_minutes``.

    Tokens per second count source and target tokens without padding, over the time from
    one step's end to the next, so data loading is included. ``val/train_minutes`` is
    the time since this fit started (a resumed run starts again from 0), logged at every
    validation to plot a score against training time.
    """

    def __init__(self) -> None:
        self._fit_start: float | None = None
        self._step_start: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule,
                             batch: Batch, batch_idx: int) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any,
                           batch: Batch, batch_idx: int) -> None:
        now = time.perf_counter()
        elapsed = now - (self._step_start or now)
        self._step_start = now
        real = int(batch.src_lengths.sum()) + int((batch.tgt_out != PAD_ID).sum())
        if elapsed > 0:
            module.log("train/tokens_per_s", real / elapsed * trainer.world_size,
                       prog_bar=True, batch_size=batch.src.size(0))

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._fit_start is not None and not trainer.sanity_checking:
            module.log("val/train_minutes", (time.perf_counter() - self._fit_start) / 60)


class TimedSchedule(L.Callback):
    """Fits every ``TimedCosine`` of the run to ``trainer.max_time``: every
    ``replan_every`` steps, its length becomes what the pace so far allows.

    The training time is Lightning's Timer's, the one that stops the run (it counts the
    time of earlier sessions of a resumed run); in DDP rank 0's, broadcast at the same
    step on every rank, so that the replicas keep one learning rate. Without a TimedCosine
    it does nothing.
    """

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._schedules(trainer) and self._timer(trainer) is None:
            raise ConfigError(TimedCosine.NO_TIME_LIMIT)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any,
                           batch: Batch, batch_idx: int) -> None:
        step = trainer.global_step
        due = [s for s in self._schedules(trainer) if step % s.replan_every == 0]
        timer = self._timer(trainer) if due else None  # looked up only on replanning steps
        if timer is None:
            return
        # Rank 0's numbers on every rank (each rank reaches this step, so the collective
        # matches): clocks read apart differ by microseconds, and so would the rates.
        elapsed = timer.time_elapsed()
        limit = elapsed + (timer.time_remaining() or 0.0)  # trainer.max_time, in seconds
        elapsed, limit = map(float, trainer.strategy.broadcast((elapsed, limit)))
        for schedule in due:
            schedule.replan(step, elapsed, limit)

    @staticmethod
    def _schedules(trainer: L.Trainer) -> list[TimedCosine]:
        return [c.scheduler for c in trainer.lr_scheduler_configs
                if isinstance(c.scheduler, TimedCosine)]

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        callbacks = getattr(trainer, "callbacks", [])  # untyped in Lightning's Trainer
        timers = [c for c in callbacks if isinstance(c, Timer)]
        return timers[0] if timers and timers[0].time_remaining() is not None else None


class PreciseBatchNorm(L.Callback):
    """Before every validation, recompute the BatchNorm statistics of the encoder's
    trained layers over ``batches`` training batches, with the weights as they are.

    The running averages that evaluation uses trail a network that is still learning
    fast: a small CNN trained from scratch on the shapes set had a validation NLL of 2.97
    with them and 0.49 with recomputed ones ("precise BN", Wu and Johnson, 2021). Frozen
    layers keep theirs. The batches come from ``datamodule.calibration_batches(n)``, the
    same on every rank; the checkpoints written after validation carry the new values.
    """

    def __init__(self, batches: int = 30) -> None:
        self.batches = batches

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        encoder: Any = getattr(module, "model", None)
        encoder = getattr(encoder, "encoder", None)
        if not hasattr(encoder, "features"):  # not an image encoder
            return
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and any(p.requires_grad for p in m.parameters())]
        if not norms or trainer.sanity_checking:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
            m.train()
        with torch.no_grad():
            for batch in trainer.datamodule.calibration_batches(self.batches):  # type: ignore[attr-defined]
                encoder.features(batch.src.to(module.device))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.eval()
