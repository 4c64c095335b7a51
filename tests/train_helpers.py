"""Compose small training configs for the toy corpus; run them with a data-order recorder.

Also a script: ``python tests/train_helpers.py OUT_DIR override...`` trains and writes,
per rank, the example indices of every step to OUT_DIR/rank<R>.json (the DDP test
runs it, since Lightning relaunches the script for every rank).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

# isort: off
# nmt first, also when this file runs as a script (DDP ranks): it registers the config
# schema and makes an installed torchvision importable before lightning imports it.
import nmt  # noqa: F401
import lightning as L
from hydra import compose, initialize_config_dir
# isort: on

ROOT = Path(__file__).resolve().parents[1]


def toy_overrides(cfg: dict, run_dir: Path) -> list[str]:
    """Overrides that train a tiny model on the toy corpus described by ``cfg``."""
    out = [
        "data=files", f"data.root={cfg['root']}", "data.name=toy",
        "data.src_lang=en", "data.tgt_lang=de",
        "data.clean.dedup=false",  # the toy corpus draws pairs with replacement
        "tokenizer.vocab_size=64", "tokenizer.input_sentence_size=0",
        "model.emb_size=16", "model.encoder_hidden=16", "model.decoder_hidden=24",
        "model.dropout=0.0", "batching.max_tokens=1500", "batching.eval_max_tokens=3000",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", f"run_dir={run_dir}",
        "callbacks.early_stopping_patience=null",
    ]
    for split, sides in cfg["files"].items():
        out += [f"data.files.{split}.{side}={path}" for side, path in sides.items()]
    return out


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class IndexRecorder(L.Callback):
    """Records (epoch, global_step, example indices) of every training batch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, list[int]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps.append((trainer.current_epoch, trainer.global_step, batch.indices.tolist()))


class Crash(L.Callback):
    """Fails like a killed process before training step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def train_toy_model(toy_dir: Path, tmp: Path) -> Path:
    """A tiny LSTM trained 4 epochs on the toy corpus under ``tmp``: its last.ckpt (with
    a shortlist table of 4 target pieces per source piece and the 8 most frequent)."""
    from conftest import files_config

    from nmt.training.train import train

    train(compose_train([*toy_overrides(files_config(toy_dir, tmp / "cache"), tmp / "run"),
                         "trainer.max_epochs=4", "test_after_training=false",
                         "optim.lr=0.01",
                         # a shortlist table that leaves out part of the 64 pieces
                         "shortlist.per_source=4", "shortlist.frequent=8"]))
    return tmp / "run" / "checkpoints" / "last.ckpt"


def fit_recorded(cfg, crash_at: int | None = None, callbacks: list[L.Callback] | None = None
                 ) -> tuple[IndexRecorder, L.Trainer]:
    from nmt.training.train import build, resolve_ckpt_path, run_dir_of

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = run_dir_of(cfg)
    resume = resolve_ckpt_path(cfg.ckpt_path, cfg.name, cfg.run_dir)
    dm, module, trainer = build(cfg, run_dir, resume)
    recorder = IndexRecorder()
    trainer.callbacks.extend([recorder, *(callbacks or [])])
    if crash_at is not None:
        trainer.callbacks.append(Crash(crash_at))
    trainer.fit(module, datamodule=dm, ckpt_path=resume.path if resume else None)
    return recorder, trainer


def train_two_ranks(overrides: list[str], tmp: Path) -> list[dict]:
    """Trains with ``overrides`` on two gloo processes (DDP on the CPU), this file run as a
    script; each rank's record (rank<R>.json: world size, global step, the steps' example
    indices, ...). Fails the test with the run's stderr if it fails."""
    import subprocess

    out = tmp / "ranks"
    out.mkdir()
    args = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", *overrides]
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), *args],
                            cwd=tmp, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    recorder, trainer = fit_recorded(compose_train(sys.argv[2:]))
    schedules = [c.scheduler for c in trainer.lr_scheduler_configs]
    out = {"steps": recorder.steps, "global_step": trainer.global_step,
           "world_size": trainer.world_size, "lr": trainer.optimizers[0].param_groups[0]["lr"],
           "total_steps": [getattr(s, "total_steps", None) for s in schedules]}
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


def load_bench(name: str):
    """bench/<name>.py as a module (the bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
