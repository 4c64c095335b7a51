"""Learning-rate schedules that torch lacks, as factories for ``optim.scheduler._target_``.

Each takes the optimizer first, as torch's schedulers do, and returns a LambdaLR
stepped every optimizer step (``interval: step`` in the config).
"""

from __future__ import annotations

import functools
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then decay with 1/sqrt(step) (Vaswani et al.)."""
    step += 1
    warmup = max(1, warmup_steps)
    return min(step / warmup, math.sqrt(warmup / step))


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float) -> float:
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
