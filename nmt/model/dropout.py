"""Dropout that draws its mask with one uniform draw per element on the CPU.

nn.Dropout draws its mask with ``bernoulli_``, which on a CPU costs about three times
``torch.rand`` per element; the decoder drops out every step's output (input
feeding runs it once per target position), where that showed as 3% of a training
step. Same distribution (keep with probability 1 - p, scale kept ones by 1/(1 - p)),
other draws; on other devices torch's fused dropout is the faster one and is used.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on the CPU (same parameters-free module, same ``p``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep
