"""Crash-safe training: kills, signals, partial validation, broken checkpoints, full disks.

The kill tests run the real ``train.py`` in a subprocess and end it with a real signal
at a chosen batch (tests/crash_helpers.py), then resume with ``ckpt_path=last`` and
compare the final weights with those of a run that was never interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import files_config
from train_helpers import ROOT, compose_train, toy_overrides

from nmt.core.errors import CheckpointError, ConfigError
from nmt.decoding.checkpoints import atomic_torch_save
from nmt.training.checkpointing import AtomicCheckpointIO, rng_states, set_rng_states
from nmt.training.loggers import read_rows
from nmt.training.train import build, plugins, train

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def toy_cfg(toy_dir, tmp_path) -> dict:
    return files_config(toy_dir, tmp_path / "cache")


def run_train(args: list[str], cwd: Path, kill: dict | None = None
              ) -> subprocess.CompletedProcess:
    """train.py in a fresh process (one torch thread: runs compare bit for bit)."""
    extra = [f"+callbacks.extra.kill.{k}={v}" for k, v in (kill or {}).items()]
    if kill:
        extra.insert(0, "+callbacks.extra.kill._target_=crash_helpers.SignalAt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args, *extra], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def step_of(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


DETERMINISTIC = ("train/loss", "train/ppl", "val/loss", "val/bleu", "epoch", "step")


def logged(run: Path) -> list[dict[str, str]]:
    """The rows of metrics.csv, timing columns left out."""
    rows = read_rows(run / "logs" / "metrics.csv")
    return [{k: v for k, v in r.items() if k in DETERMINISTIC and v} for r in rows]


def toy_args(cfg: dict, run: Path, *more: str) -> list[str]:
    return [*toy_overrides(cfg, run), "model.dropout=0.1", "test_after_training=false",
            "callbacks.every_n_minutes=null", *more]


# --- kills ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(toy_cfg, tmp_path):
    args = ("callbacks.every_n_train_steps=5", "trainer.max_steps=30")
    full = run_train(toy_args(toy_cfg, tmp_path / "full", *args), tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    killed = run_train(toy_args(toy_cfg, run, *args), tmp_path, kill={"step": 12})
    assert killed.returncode == -signal.SIGKILL
    assert step_of(run) == 10  # the step checkpoint before the kill
    before = logged(run)
    assert before and max(int(r["step"]) for r in before) >= 8  # rows up to the checkpoint

    resumed = run_train(toy_args(toy_cfg, run, *args, "ckpt_path=last"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_of(run) == 30
    assert_same_weights(tmp_path / "full", run)  # dropout masks included
    assert logged(run) == logged(tmp_path / "full")  # the log of one run, no gap, no repeat
    history = json.loads((run / "metrics.json").read_text())["validations"]
    assert history and history[0]["epoch"] == 0


@pytest.mark.slow
def test_sigkill_in_second_epoch_of_a_default_run(toy_cfg, tmp_path):
    args = ("trainer.max_epochs=3",)  # no step checkpoints asked for
    full = run_train(toy_args(toy_cfg, tmp_path / "full", *args), tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    epoch_steps = step_of(tmp_path / "full") // 3

    run = tmp_path / "killed"
    killed = run_train(toy_args(toy_cfg, run, *args), tmp_path,
                       kill={"epoch": 1, "batch": 2})
    assert killed.returncode == -signal.SIGKILL
    assert step_of(run) == epoch_steps  # saved at the end of the first epoch
    resumed = run_train(toy_args(toy_cfg, run, *args, "ckpt_path=last"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(tmp_path / "full", run)
    assert logged(run) == logged(tmp_path / "full")
    assert len(json.loads((run / "metrics.json").read_text())["validations"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_exits_cleanly_and_resumes(toy_cfg, tmp_path, signum):
    args = ("trainer.max_steps=20",)
    full = run_train(toy_args(toy_cfg, tmp_path / "full", *args), tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "stopped"
    stopped = run_train(toy_args(toy_cfg, run, *args), tmp_path,
                        kill={"step": 7, "signum": int(signum)})
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    name = signal.Signals(signum).name
    # The signal comes in the hooks after step 7; ResumableCheckpoint, a Lightning
    # Checkpoint, runs after every other callback: it saves at the end of that step.
    assert f"stopped by {name} at step 7; resumable checkpoint: {run}" in stopped.stderr
    assert f"run_dir={run} ckpt_path=last" in stopped.stderr  # how to resume
    assert step_of(run) == 7  # saved after the step that was running

    resumed = run_train(toy_args(toy_cfg, run, *args, "ckpt_path=last"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(tmp_path / "full", run)


# --- partial and no validation -------------------------------------------------------------


def test_limit_val_batches_scores_the_decoded_part(toy_cfg, tmp_path, caplog):
    run = tmp_path / "run"
    cfg = compose_train([*toy_overrides(toy_cfg, run), "trainer.max_epochs=2",
                         "+trainer.limit_val_batches=1", "batching.eval_max_tokens=300",
                         "test_after_training=false"])
    with caplog.at_level("INFO"):
        metrics = train(cfg)
    assert "val/bleu" in metrics
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert any("computed on the" in r.message and "limit_val_batches" in r.message
               for r in caplog.records)
    assert "best checkpoint: by val/bleu (max)" in caplog.text
    # last.ckpt is saved with its full state, said explicitly (no log line at every save)
    assert "`weights_only` was not set" not in caplog.text


def test_val_check_interval_with_plateau_and_loss_monitor(toy_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = compose_train([*toy_overrides(toy_cfg, run), "trainer.max_epochs=1",
                         "trainer.val_check_interval=0.5", "callbacks.monitor=val/loss",
                         "test_after_training=false"])
    train(cfg)
    vals = json.loads((run / "metrics.json").read_text())["validations"]
    assert len(vals) == 2 and all("val/loss" in v for v in vals)


def test_no_validation_keeps_last_and_refuses_plateau(toy_cfg, tmp_path):
    base = [*toy_overrides(toy_cfg, tmp_path / "run"), "trainer.max_epochs=1",
            "+trainer.limit_val_batches=0"]
    with pytest.raises(ConfigError, match="plateau follows a validation metric"):
        build(compose_train(base), tmp_path / "run")
    metrics = train(compose_train([*base, "optim.scheduler=null", "callbacks.keep_last=1"]))
    assert "test/bleu" in metrics  # scored with last.ckpt, since there is no best
    run = tmp_path / "run"
    assert not list((run / "checkpoints").glob("best-*"))
    assert json.loads((run / "metrics.json").read_text())["best_checkpoint"] == ""
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 1  # keep_last without validation
    assert not [p for p in run.rglob("*.ckpt") if "=" in p.name]  # no Lightning default one


@pytest.mark.parametrize(("override", "match"), [
    ("callbacks.monitor=val/acc", r"callbacks.monitor: unknown metric 'val/acc'; valid"),
    ("callbacks.every_n_minutes=0", "every_n_minutes must be positive or null"),
    ("callbacks.keep_last=-2", r"callbacks.keep_last must be >= 0 \(0: none\) or -1 \(all\), "
                               "got -2"),
    ("+callbacks.extra.x._target_=no.such.Callback", "callbacks.extra.x: "),
])
def test_bad_callback_settings(toy_cfg, tmp_path, override, match):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"), override])
    with pytest.raises(ConfigError, match=match):
        build(cfg, tmp_path / "run")


# --- broken checkpoints, unwritable and full disks --------------------------------------------


def test_truncated_checkpoint_is_one_line_for_every_command(toy_cfg, tmp_path):
    run = tmp_path / "run"
    assert run_train(toy_args(toy_cfg, run, "trainer=debug", "trainer.fast_dev_run=false",
                              "trainer.max_steps=2"), tmp_path).returncode == 0
    good = run / "checkpoints" / "last.ckpt"
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "in.txt").write_text("A dog runs .\n")
    commands = [["train.py", *toy_args(toy_cfg, run), f"ckpt_path={bad}"],
                ["translate.py", f"checkpoint={bad}", f"input={tmp_path / 'in.txt'}"],
                ["evaluate.py", f"checkpoint={bad}", f"src={tmp_path / 'in.txt'}",
                 f"ref={tmp_path / 'in.txt'}", f"output_dir={tmp_path / 'eval'}"]]
    for command in commands:
        result = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]],
                                cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, (command[0], result.stderr[-2000:])
        assert result.stderr.strip().splitlines()[-1].startswith(
            f"error: {bad}: not a readable checkpoint"), command[0]
        assert "Traceback" not in result.stderr


def test_unwritable_run_dir_fails_at_start(toy_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = compose_train(toy_overrides(toy_cfg, blocker / "run"))
    with pytest.raises(ConfigError, match=f"run_dir={blocker / 'run'}: cannot write there"):
        train(cfg)


def test_atomic_save_keeps_the_previous_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def full_disk(obj, f):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: No space left on device; the "
                                              r"previous last\.ckpt is intact"):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_disk_full_during_training_keeps_last(toy_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = compose_train([*toy_overrides(toy_cfg, run), "callbacks.every_n_train_steps=3",
                         "trainer.max_steps=9", "test_after_training=false"])
    real_save, saves = torch.save, []

    def save_twice_then_fail(obj, f):
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saves.append(obj["global_step"])
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_twice_then_fail)
    with pytest.raises(CheckpointError, match="No space left on device; the previous"):
        train(cfg)
    monkeypatch.undo()
    assert saves == [3, 6] and step_of(run) == 6


# --- SLURM ------------------------------------------------------------------------------------


def test_slurm_auto_requeue_under_slurm(monkeypatch):
    cfg = compose_train(["trainer=ddp"])
    assert [type(p).__name__ for p in plugins(cfg)] == ["AtomicCheckpointIO"]
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "nmt")
    [io, env] = plugins(cfg)
    assert isinstance(io, AtomicCheckpointIO) and env.auto_requeue
    cfg = compose_train(["trainer=ddp", "callbacks.slurm_auto_requeue=false"])
    assert len(plugins(cfg)) == 1


def test_random_generators_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    atomic_torch_save({"rng": rng_states()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(again[0], expected[0])
    assert np.array_equal(again[1], expected[1]) and again[2] == expected[2]
