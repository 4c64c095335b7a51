"""Learning-rate schedules that torch lacks, as factories for ``optim.scheduler._target_``.

Each takes the optimizer first, as torch's schedulers do, and is stepped every
optimizer step (``interval: step`` in the config).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then decay with 1/sqrt(step) (Vaswani et al.)."""
    step += 1
    warmup = max(1, warmup_steps)
    return min(step / warmup, math.sqrt(warmup / step))


def cosine_factor(step: int, warmup_steps: int, total_steps: float, min_factor: float) -> float:
    """Linear warmup, then a half cosine from 1 down to ``min_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_inverse_sqrt(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """The learning rate rises linearly for ``warmup_steps``, then falls as 1/sqrt(step)."""
    # A partial, not a closure: LambdaLR saves its (empty) __dict__ in checkpoints.
    return LambdaLR(optimizer, functools.partial(inverse_sqrt_factor,
                                                 warmup_steps=int(warmup_steps)))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr: float = 0.0) -> LambdaLR:
    """Linear warmup, then a half cosine down to ``min_lr`` at ``total_steps``.

    ``min_lr`` is absolute, like ReduceLROnPlateau's; it becomes a factor of the
    optimizer's learning rate. The module fills in ``total_steps`` when the config
    leaves it null.
    """
    if not math.isfinite(total_steps):  # the trainer's estimate of an endless run
        raise ValueError("the run's length is unknown; set optim.scheduler.total_steps or "
                         "trainer.max_steps")
    min_factor = min_lr / optimizer.defaults.get("lr", 1.0)
    return LambdaLR(optimizer, functools.partial(
        cosine_factor, warmup_steps=int(warmup_steps), total_steps=int(total_steps),
        min_factor=min_factor))


class TimedCosine(LRScheduler):
    """Linear warmup, then a half cosine down to ``min_lr`` when ``trainer.max_time`` is
    spent, however many steps the machine manages in that time.

    ``warmup_cosine`` ends after a step count: on a machine faster than the one it was
    sized on, the run idles at ``min_lr`` for its last minutes; on a slower one it stops
    high on the curve. Here the cosine's length in steps is re-estimated every
    ``replan_every`` steps (``replan``, called by nmt.training.callbacks.TimedSchedule) from the
    run's own pace: the steps so far over the training time so far, validations included,
    times the time left. Between replans the rate is a function of the step, as in
    ``warmup_cosine``; before the first one there is no decay. The schedule follows the
    machine's speed, so two runs of one seed are not identical step for step.
    """

    CONFIG = ("warmup_steps", "min_factor", "replan_every")  # from the config, not saved
    NO_TIME_LIMIT = ("optim.scheduler: nmt.training.schedules.TimedCosine ends when the run's "
                     "time is spent; set trainer.max_time (DD:HH:MM:SS)")

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, min_lr: float = 0.0,
                 replan_every: int = 100) -> None:
        if int(replan_every) < 1:
            raise ValueError(f"replan_every must be >= 1, got {replan_every}")
        self.warmup_steps = int(warmup_steps)
        self.min_factor = min_lr / optimizer.defaults.get("lr", 1.0)
        self.replan_every = int(replan_every)
        self.total_steps = math.inf  # the planned length; saved, so a resumed run keeps it
        super().__init__(optimizer)

    def get_lr(self) -> list[float | Tensor]:
        factor = cosine_factor(self.last_epoch, self.warmup_steps, self.total_steps,
                               self.min_factor)
        return [base * factor for base in self.base_lrs]

    def replan(self, step: int, elapsed: float, limit: float) -> None:
        """End the cosine at ``limit`` seconds of training: ``step`` steps took ``elapsed``."""
        if step > 0 and elapsed > 0:
            self.total_steps = step + max(0.0, limit - elapsed) * step / elapsed

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k not in self.CONFIG}
