"""Dropout: of units, with one uniform draw per element on the CPU; of whole words.

nn.Dropout draws its mask with ``bernoulli_``, which on a CPU costs about three times
``torch.rand`` per element; the decoder drops out every step's output (input
feeding runs it once per target position), where that showed as 3% of a training
step. Same distribution (keep with probability 1 - p, scale kept ones by 1/(1 - p)),
other draws; on other devices torch's fused dropout is the faster one and is used.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SPECIAL_IDS = (PAD_ID, UNK_ID, BOS_ID, EOS_ID)  # the vocabulary's first ids, never dropped


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on the CPU (same parameters-free module, same ``p``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep


def drop_words(ids: torch.Tensor, p: float) -> torch.Tensor:
    """Word dropout: each real token of ``ids`` (any shape) replaced by UNK with
    probability ``p``; padding, BOS and EOS are kept. A new tensor; ``ids`` itself
    when ``p`` is 0 (no random draw, so runs without it keep their random stream).

    The whole token goes, as in Sennrich et al. (2016)'s Edinburgh WMT systems and
    Gal & Ghahramani (2016)'s embedding dropout: the model learns to translate around
    words it cannot see, which the dropout of single embedding units does not teach.
    """
    if p == 0:
        return ids
    drop = (torch.rand(ids.shape, device=ids.device) < p) & (ids > max(SPECIAL_IDS))
    return ids.masked_fill(drop, UNK_ID)
