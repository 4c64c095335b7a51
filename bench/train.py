"""Training speed benchmark: the default recipe on Multi30k en->de, real data, real trainer.

    python bench/train.py [--steps 60] [--warmup 10] [hydra overrides, e.g. model=gru
                           trainer.precision=bf16-mixed model.input_feeding=false]

Trains with Lightning (validation off) for warm-up + measured steps and times
the measured ones. tokens_per_s counts real source and target tokens (EOS
included, padding not); achieved_over_ceiling is the achieved FLOP rate over the
device's own matmul speed (sgemm on a CPU, the matmul peak of the training
precision's dtype on a GPU), probed after every measured step (outside the timed
steps) and taken as the median of the probes: on a shared machine whose speed
drifts, one probe before or after training can land on a fast or a slow moment
(single probes ranged 115-169 GFLOP/s on one 2-core machine within minutes). The
last line printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# isort: off
import nmt  # noqa: E402, F401  (first: makes an installed torchvision importable for lightning)
import lightning as L  # noqa: E402
from flops import ceiling, counting, sgemm_gflop_per_s  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from nmt.core.tokens import PAD_ID  # noqa: E402
from nmt.training.train import build  # noqa: E402
# isort: on


class StepTimer(L.Callback):
    """Times the steps after ``warmup`` (data loading included) and, after each, probes
    the ceiling with ``probe()`` (its name and GFLOP/s), outside the timed stretch."""

    def __init__(self, warmup: int, probe: Callable[[], tuple[str, float]]) -> None:
        self.warmup = warmup
        self.probe = probe
        self.resumed: float | None = None  # when the current timed stretch began
        self.steps = self.real = self.padded = self.target = 0
        self.elapsed = 0.0
        self.probes: list[float] = []
        self.ceiling = ""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.resumed is None:
            self.resumed = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.resumed is None:
            return
        self.steps += 1
        target = int((batch.tgt_out != PAD_ID).sum())
        self.target += target
        self.real += int(batch.src_lengths.sum()) + target
        self.padded += batch.src.numel() + batch.tgt_out.numel()
        if batch.src.is_cuda:  # the step's kernels must not run into the probe's time
            torch.cuda.synchronize(batch.src.device)
        self.elapsed += time.perf_counter() - self.resumed
        self.ceiling, gflop = self.probe()
        self.probes.append(gflop)
        self.resumed = time.perf_counter()


def training_flops(module, batch) -> float:
    """Floating-point operations of one training step (forward + backward) on ``batch``."""
    from nmt.training.module import label_smoothed_nll

    try:
        with counting(module, rnn_passes=3) as count:
            loss, _, n = label_smoothed_nll(module(batch), batch.tgt_out, 0.1)
            (loss / n).backward()
    finally:
        module.zero_grad(set_to_none=True)
    return count.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    args, overrides = parser.parse_known_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            *overrides, f"trainer.max_steps={args.warmup + args.steps}",
            "+trainer.limit_val_batches=0", "optim.scheduler=null",  # no validation, no plateau
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "callbacks.early_stopping_patience=null"])
    L.seed_everything(cfg.seed, verbose=False)
    with tempfile.TemporaryDirectory(prefix="nmt-bench-train-") as run_dir:
        cfg.run_dir = run_dir
        dm, module, trainer = build(cfg, Path(run_dir))
        precision = str(cfg.trainer.precision)
        dtype = (torch.bfloat16 if precision.startswith("bf16") else
                 torch.float16 if precision.startswith("16") else torch.float32)
        # The probe runs where the model is (Lightning moves it before the first step).
        timer = StepTimer(args.warmup, lambda: ceiling(next(module.parameters()).device, dtype,
                                                       repeats=3))
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=dm)
        # FLOPs per real token, averaged over a few batches of the same epoch order.
        flops = real = 0
        for _, batch in zip(range(5), dm.train_dataloader(), strict=False):
            flops += training_flops(module, batch)
            real += int(batch.src_lengths.sum()) + int((batch.tgt_out != PAD_ID).sum())
    m = cfg.model
    achieved = flops / real * timer.real / timer.elapsed / 1e9
    device = next(module.parameters()).device
    ceiling_gflop = statistics.median(timer.probes)
    sgemm = ceiling_gflop if device.type == "cpu" else sgemm_gflop_per_s()  # measured once
    result = {
        "tokens_per_s": round(timer.real / timer.elapsed),
        "target_tokens_per_s": round(timer.target / timer.elapsed),  # as Joey NMT counts
        "padded_fraction": round(1 - timer.real / timer.padded, 4),
        "ms_per_step": round(1000 * timer.elapsed / timer.steps, 1),
        "steps": timer.steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "precision": str(cfg.trainer.precision),
        "parameters": sum(p.numel() for p in module.parameters()),
        "model": {"cell": m.cell, "attention": m.attention, "emb": m.emb_size,
                  "encoder": f"{'bi-' if m.bidirectional else ''}{m.encoder_hidden}x"
                             f"{m.encoder_layers}",
                  "decoder": f"{m.decoder_hidden}x{m.decoder_layers}",
                  "input_feeding": m.input_feeding, "vocab": module.hparams.tgt_vocab_size},
        "mflop_per_token": round(flops / real / 1e6, 2),
        "achieved_gflop_per_s": round(achieved, 1),
        "sgemm_gflop_per_s": round(sgemm, 1),
        # The ceiling of the device trained on, measured now: sgemm on a CPU, the matmul
        # peak of the training precision's dtype on a GPU.
        "ceiling": timer.ceiling, "ceiling_gflop_per_s": round(ceiling_gflop, 1),
        "achieved_over_ceiling": round(achieved / ceiling_gflop, 3),
        "ceiling_probes": len(timer.probes),
        "ceiling_probe_range": [round(min(timer.probes), 1), round(max(timer.probes), 1)],
        "max_tokens": cfg.batching.max_tokens,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
