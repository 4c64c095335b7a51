"""Training: from a composed config to a trained, tested checkpoint.

``train(cfg)`` checks the whole config first (so a typo fails before any data is
processed), prepares the data, builds the LightningModule and the Trainer, fits,
and scores the best checkpoint on the test split.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from nmt.core.errors import CheckpointError, ConfigError
from nmt.core.metrics import MONITORS
from nmt.data.datamodule import NMTDataModule
from nmt.decoding.checkpoints import BEST, LAST, RECENT, load_checkpoint
from nmt.training.allocator import keep_freed_memory
from nmt.training.builders import build_captioning, build_translation, plain, scoring_of
from nmt.training.callbacks import PreciseBatchNorm, Throughput, TimedSchedule
from nmt.training.checkpointing import AtomicCheckpointIO, ResumableCheckpoint
from nmt.training.curves import Curves
from nmt.training.finetune import InitFrom, check_resume, start_from
from nmt.training.gradients import GradientFlow
from nmt.training.loggers import ContinuedCSVLogger, read_rows
from nmt.training.module import EVAL_METRICS, TranslationModule
from nmt.training.optim import check_optim, follows_metric

log = logging.getLogger(__name__)

TASKS = ("translate", "caption")  # conf/task/

TRAINER_KEYS = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
# Set here from the rest of the config; not to be given in conf/trainer.
MANAGED_TRAINER_KEYS = {"callbacks", "logger", "default_root_dir", "use_distributed_sampler",
                        "plugins"}


def run_dir_of(cfg: DictConfig) -> Path:
    """``cfg.run_dir`` if set, else Hydra's run directory (runs/<name>/<date_time>)."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # composed without @hydra.main (tests, notebooks)
        return Path("runs") / cfg.name / time.strftime("%Y-%m-%d_%H-%M-%S")


def check_trainer(trainer_cfg: dict[str, Any]) -> None:
    unknown = set(trainer_cfg) - TRAINER_KEYS
    if unknown:
        raise ConfigError(f"trainer: unknown key(s) {sorted(unknown)}; any keyword argument of "
                          "lightning.Trainer is valid, e.g. max_epochs, devices, precision")
    managed = set(trainer_cfg) & MANAGED_TRAINER_KEYS
    if managed:
        raise ConfigError(f"trainer: {sorted(managed)} are set by nmt itself; use callbacks.* "
                          "or the run directory instead")


@dataclass(frozen=True)
class Resume:
    """A checkpoint to resume from, checked to be readable before anything else runs."""

    path: str
    global_step: int


def resolve_ckpt_path(ckpt_path: str | None, name: str, run_dir: str | None) -> Resume | None:
    """``last``: the newest last.ckpt of run_dir, or of runs/<name>/*/; a path must exist
    and be a complete checkpoint of this toolkit."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        pattern = (Path(run_dir), "checkpoints/last.ckpt") if run_dir else (
            Path("runs", name), "*/checkpoints/last.ckpt")
        candidates = sorted(pattern[0].glob(pattern[1]), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"ckpt_path=last: no {pattern[0] / pattern[1]} to resume from; "
                              "give a checkpoint path instead")
        ckpt_path = str(candidates[-1])
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    ckpt = load_checkpoint(ckpt_path)  # a truncated or foreign file: CheckpointError
    if "averaged_from" in ckpt:
        raise CheckpointError(f"{ckpt_path}: an average of {len(ckpt['averaged_from'])} "
                              "checkpoints (average.py) holds weights only and cannot be "
                              "resumed")
    if "loops" not in ckpt:
        raise CheckpointError(f"{ckpt_path}: holds weights only (no training state) and "
                              "cannot be resumed")
    return Resume(ckpt_path, int(ckpt.get("global_step", 0)))


def prepare_run_dir(run_dir: Path, config_yaml: str) -> None:
    """Create the run directory and write config.yaml: an unwritable place fails here."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Under torchrun every rank writes it at once: one temporary file each.
        tmp = run_dir / f".config.yaml.{socket.gethostname()}.{os.getpid()}.tmp"
        tmp.write_text(config_yaml)
        tmp.replace(run_dir / "config.yaml")
    except OSError as e:
        raise ConfigError(f"run_dir={run_dir}: cannot write there "
                          f"({e.strerror or type(e).__name__})") from None


def validation_runs(trainer_cfg: dict[str, Any]) -> bool:
    return trainer_cfg.get("limit_val_batches") not in (0, 0.0)


def build(cfg: DictConfig, run_dir: Path, resume: Resume | None = None,
          init: InitFrom | None = None) -> tuple[NMTDataModule, TranslationModule, L.Trainer]:
    """Check the config, prepare the data, and build the data module, model and trainer;
    ``init``: cfg.init_from's model, with cfg already made to fit it (start_from)."""
    if init is None and cfg.get("init_from"):
        cfg, init = start_from(cfg)
    keep_freed_memory()  # a step's large buffers are reused, not mapped anew each step
    trainer_cfg = plain(cfg.trainer)
    check_trainer(trainer_cfg)
    if cfg.task not in TASKS:
        raise ConfigError(f"task: unknown task {cfg.task!r}; valid choices: {', '.join(TASKS)}")
    check_optim(plain(cfg.optim), time_limit=cfg.trainer.get("max_time") is not None)
    builder = build_captioning if cfg.task == "caption" else build_translation
    dm, module = builder(cfg, init)
    trainer_cfg = dm.trainer_settings(trainer_cfg)
    loggers = make_loggers(cfg, run_dir, resume)
    callbacks = make_callbacks(cfg, run_dir, trainer_cfg, module)
    try:
        trainer = L.Trainer(**trainer_cfg, callbacks=callbacks, logger=loggers,
                            default_root_dir=run_dir, use_distributed_sampler=False,
                            plugins=plugins(cfg))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"trainer: {e}") from None
    return dm, module, trainer


def make_loggers(cfg: DictConfig, run_dir: Path, resume: Resume | None) -> list[Any]:
    """logs/metrics.csv, always, and the loggers of the ``logger`` group, instantiated by
    Hydra with the run directory as their ``save_dir``; a resumed run continues them."""
    step = None if resume is None else resume.global_step
    loggers: list[Any] = [ContinuedCSVLogger(run_dir, name="logs", version="",
                                             resume_step=step)]
    for name, spec in (cfg.get("logger") or {}).items():
        loggers.append(instantiate_logger(name, spec, run_dir, step))
    return loggers


def instantiate_logger(name: str, spec: DictConfig, run_dir: Path, resume_step: int | None
                       ) -> Any:
    try:
        cls = get_class(spec._target_)
        extra: dict[str, Any] = {}
        if "save_dir" in inspect.signature(cls).parameters and spec.get("save_dir") is None:
            extra["save_dir"] = str(run_dir)
        if issubclass(cls, TensorBoardLogger) and resume_step is not None:
            extra["purge_step"] = resume_step  # hide the events after the checkpoint
        return instantiate(spec, **extra)
    except (InstantiationException, ImportError, AttributeError, ValueError) as e:
        cause = e.__cause__ or e
        raise ConfigError(f"logger.{name}: {str(cause).strip().splitlines()[0]}") from None


def make_callbacks(cfg: DictConfig, run_dir: Path, trainer_cfg: dict[str, Any],
                   module: TranslationModule) -> list[L.Callback]:
    cb = cfg.callbacks
    if cb.monitor not in MONITORS:
        raise ConfigError(f"callbacks.monitor: unknown metric {cb.monitor!r}; valid choices: "
                          f"{', '.join(MONITORS)}")
    for name in ("keep_best", "keep_last"):
        if cb[name] < -1:
            raise ConfigError(f"callbacks.{name} must be >= 0 (0: none) or -1 (all), "
                              f"got {cb[name]}")
    try:
        last = ResumableCheckpoint(run_dir / "checkpoints", cb.every_n_minutes,
                                   cb.every_n_train_steps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    callbacks: list[L.Callback] = [LearningRateMonitor(logging_interval="step"), Throughput(),
                                   TimedSchedule(), Curves(run_dir)]
    if cfg.task == "caption":  # a CNN's BatchNorm statistics, recomputed for validation
        callbacks.append(PreciseBatchNorm())
    if cb.gradient_flow.every_n_steps is not None:
        callbacks.append(GradientFlow(run_dir, cb.gradient_flow.every_n_steps,
                                      cb.gradient_flow.sentences))
    module.monitor = (cb.monitor, MONITORS[cb.monitor])
    if validation_runs(trainer_cfg):
        log.info("best checkpoint%s: by %s (%s)", "" if cb.early_stopping_patience is None
                 else " and early stopping", cb.monitor, MONITORS[cb.monitor])
        # First: trainer.checkpoint_callback is the first ModelCheckpoint.
        callbacks.insert(0, ModelCheckpoint(
            dirpath=run_dir / "checkpoints", monitor=cb.monitor, mode=MONITORS[cb.monitor],
            save_top_k=cb.keep_best, filename=BEST, auto_insert_metric_name=False))
        if cb.early_stopping_patience is not None:
            callbacks.append(EarlyStopping(monitor=cb.monitor, mode=MONITORS[cb.monitor],
                                           patience=cb.early_stopping_patience, strict=False))
    else:
        if follows_metric(plain(cfg.optim)):
            raise ConfigError("optim.scheduler: plateau follows a validation metric, but "
                              "validation is off (limit_val_batches=0); set "
                              "optim.scheduler=null")
        log.info("validation is off: no best checkpoint and no early stopping; "
                 "checkpoints/last.ckpt is kept")
    if cb.keep_last:  # the newest by step: at every validation, or epoch end without one
        callbacks.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", monitor="step", mode="max",
            save_top_k=cb.keep_last, filename=RECENT, auto_insert_metric_name=False))
    if trainer_cfg.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    for name, spec in (cb.get("extra") or {}).items():
        try:
            callbacks.append(instantiate(spec))
        except InstantiationException as e:
            raise ConfigError(f"callbacks.extra.{name}: {str(e).splitlines()[0]}") from None
    # After every ModelCheckpoint: last.ckpt then holds their states after the epoch's saves.
    return [*callbacks, last]


def plugins(cfg: DictConfig) -> list[Any]:
    """Atomic checkpoint writes; under SLURM, Lightning's requeue on its signal."""
    out: list[Any] = [AtomicCheckpointIO()]
    if cfg.callbacks.slurm_auto_requeue and SLURMEnvironment.detect():
        out.append(SLURMEnvironment(auto_requeue=True))
    return out


def validation_history(run_dir: Path) -> list[dict[str, float]]:
    """Every validation of the run (resumes included), from logs/metrics.csv."""
    history = []
    for row in read_rows(run_dir / "logs" / "metrics.csv"):
        values = {k: float(v) for k, v in row.items()
                  if v not in ("", None) and (k.startswith("val/") or k in ("epoch", "step"))}
        if any(k.startswith("val/") for k in values):
            history.append(values)
    return history


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (or resume) as configured; return the final validation and test metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg, init = start_from(cfg)  # init_from: the checkpoint's architecture and tokenizers
    resume = resolve_ckpt_path(cfg.ckpt_path, cfg.name, cfg.run_dir)
    if init is not None and resume is not None:
        check_resume(init, resume.path)
    run_dir = run_dir_of(cfg)
    prepare_run_dir(run_dir, OmegaConf.to_yaml(cfg, resolve=True))
    dm, module, trainer = build(cfg, run_dir, resume, init)
    trainer.fit(module, datamodule=dm, ckpt_path=resume.path if resume else None)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # The first ModelCheckpoint (make_callbacks puts ours first); without validation there
    # is none, or that of callbacks.keep_last, which follows the step.
    best_cb = trainer.checkpoint_callback
    best = (best_cb.best_model_path if isinstance(best_cb, ModelCheckpoint)
            and best_cb.monitor == cfg.callbacks.monitor else "")
    scored = best or str(run_dir / "checkpoints" / LAST)
    if cfg.test_after_training and dm.has_split("test") and Path(scored).is_file():
        for result in trainer.test(module, datamodule=dm, ckpt_path=scored, verbose=False):
            metrics.update({k: float(v) for k, v in result.items()})
    if trainer.is_global_zero:
        # The sacrebleu signatures of the last scores: the test's if it ran, else validation's.
        prefix = "test" if "test/bleu" in metrics else "val"
        signed = ({f"{prefix}/{k}": v for k, v in scoring_of(cfg).signatures(EVAL_METRICS).items()}
                  if f"{prefix}/bleu" in metrics and cfg.task == "translate" else {})
        summary = {"run_dir": str(run_dir), "init_from": cfg.get("init_from"),
                   "best_checkpoint": best, **metrics, **signed,
                   "test_decoding": plain(cfg.test_decoding),
                   "validations": validation_history(run_dir)}
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
        log.info("finished: %s", json.dumps({k: v for k, v in summary.items()
                                             if k != "validations"}))
    return metrics
