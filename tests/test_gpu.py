"""The GPU paths: training at every precision, DDP, and translation on CUDA.

Skipped where no CUDA device is available (CI); run on a GPU machine with
``pytest tests/test_gpu.py``. They use the very same code as the CPU tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import files_config, toy_pairs
from train_helpers import compose_train, fit_recorded, toy_overrides

from nmt.decoding.options import Decoding
from nmt.inference.translator import Translator
from nmt.training.loggers import read_rows

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def toy_cfg(toy_dir, tmp_path) -> dict:
    return files_config(toy_dir, tmp_path / "cache")


def assert_loss_fell(run: Path, below: float) -> None:
    """The last train/loss of the run's metrics.csv is under ``below`` times its first:
    the optimizer stepped (a GradScaler that skipped every step, on inf or NaN gradients,
    would leave the loss at its first value, give or take the batch)."""
    rows = read_rows(run / "logs" / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) > 1 and losses[-1] < below * losses[0], losses


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_gpu_training_at_each_precision(toy_cfg, tmp_path, precision):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"), "trainer=gpu",
                         f"trainer.precision={precision}", "trainer.max_epochs=3",
                         "optim.lr=0.01"])
    recorder, trainer = fit_recorded(cfg)
    assert trainer.global_step == len(recorder.steps) > 0
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert_loss_fell(tmp_path / "run", below=0.8)  # on the CPU: 4.16 to 2.45 in 69 steps
    # The checkpoint written on the GPU translates on the CPU.
    tr = Translator.from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", "cpu")
    assert len(tr.translate_text([toy_pairs(1, seed=3)[0][0], ""], Decoding(beam_size=2))) == 2


def test_ddp_strategy_on_one_gpu_then_cpu(toy_cfg, tmp_path):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"), "trainer=ddp",
                         "trainer.devices=1", "trainer.max_epochs=1"])
    recorder, trainer = fit_recorded(cfg)
    assert trainer.world_size == 1 and trainer.global_step == len(recorder.steps) > 0
    assert_loss_fell(tmp_path / "run", below=0.97)  # one epoch: 4.16 to 3.85 on the CPU
    # The NCCL process group outlives that fit; a CPU fit in the same process must not use it.
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "cpu"), "trainer.max_epochs=1"])
    _, trainer = fit_recorded(cfg)
    assert "val/bleu" in trainer.callback_metrics  # validated, on one process
    assert_loss_fell(tmp_path / "cpu", below=0.97)


def test_translation_on_cuda_matches_cpu(toy_cfg, tmp_path):
    from nmt.training.train import train

    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"), "trainer.max_epochs=4",
                         "test_after_training=false", "optim.lr=0.01"])
    train(cfg)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cpu, gpu = Translator.from_checkpoint(path, "cpu"), Translator.from_checkpoint(path, "cuda")
    assert next(gpu.model.parameters()).is_cuda
    sentences = [s for s, _ in toy_pairs(20, seed=11)] + [""]
    for beam in (1, 4):
        decoding = Decoding(beam_size=beam)
        assert gpu.translate_text(sentences, decoding) == cpu.translate_text(sentences, decoding)
