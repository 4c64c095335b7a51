"""FLOP counting and this machine's matmul speed, shared by the benchmarks.

torch's FlopCounterMode counts matmuls; the fused nn.LSTM/GRU/RNN kernels it
cannot see are counted by hand: 2 * gates * hidden * (input + hidden) per token,
direction and layer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


class FlopCount:
    """``total`` FLOPs of the code run inside ``counting(module)``."""

    def __init__(self) -> None:
        self.matmul = 0.0
        self.rnn = 0.0

    @property
    def total(self) -> float:
        return self.matmul + self.rnn


@contextlib.contextmanager
def counting(module: nn.Module, rnn_passes: int = 1) -> Iterator[FlopCount]:
    """Count the FLOPs of what runs inside; ``rnn_passes`` = 3 counts a forward and a
    backward of the fused recurrences (which FlopCounterMode does not see)."""
    count = FlopCount()

    def hook(mod: nn.RNNBase, args: tuple, output: object) -> None:
        x = args[0]
        tokens = x.data.size(0) if isinstance(x, PackedSequence) else x.size(0) * x.size(1)
        dirs = 2 if mod.bidirectional else 1
        for layer in range(mod.num_layers):
            inp = mod.input_size if layer == 0 else mod.hidden_size * dirs
            per_token = 2 * GATES[type(mod).__name__] * mod.hidden_size * (inp + mod.hidden_size)
            count.rnn += rnn_passes * per_token * tokens * dirs

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, nn.RNNBase)]
    try:
        with FlopCounterMode(display=False) as counter:
            yield count
    finally:
        for h in handles:
            h.remove()
    count.matmul = counter.get_total_flops()


def sgemm_gflop_per_s(n: int = 2048, k: int = 512, repeats: int = 10) -> float:
    """This machine's float32 matmul speed on a large product, for comparison."""
    return matmul_gflop_per_s("cpu", torch.float32, n, k, repeats)


def matmul_gflop_per_s(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       n: int = 2048, k: int = 512, repeats: int = 10) -> float:
    """A device's matmul speed on an (n x k) @ (k x n) product in ``dtype``, GFLOP/s: what
    no model's step can beat there, measured in the same run as the model."""
    device = torch.device(device)
    a = torch.randn(n, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)  # written in place: no allocation timed

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b, out=c)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b, out=c)
    sync()
    return 2 * n * k * n * repeats / (time.perf_counter() - start) / 1e9


def ceiling(device: str | torch.device, dtype: torch.dtype = torch.float32,
            repeats: int | None = None) -> tuple[str, float]:
    """The ceiling a bench compares with, and its GFLOP/s: float32 sgemm (2048 x 512) on a
    CPU; on a GPU, the matmul peak of ``dtype`` on large (8192 x 8192) products.
    ``repeats``: products timed (default 10 on a CPU, 20 on a GPU; fewer for a quick
    probe between training steps)."""
    if torch.device(device).type == "cpu":
        return "sgemm float32 2048x512x2048", sgemm_gflop_per_s(repeats=repeats or 10)
    name = str(dtype).removeprefix("torch.")
    return (f"matmul {name} 8192x8192x8192",
            matmul_gflop_per_s(device, dtype, 8192, 8192, repeats or 20))
