"""Training: from a composed config to a trained, tested checkpoint.

``train(cfg)`` checks the whole config first (so a typo fails before any data is
processed), prepares the data, builds the LightningModule and the Trainer, fits,
and scores the best checkpoint on the test split.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from nmt.data.datamodule import NMTDataModule
from nmt.errors import ConfigError
from nmt.module import TranslationModule

log = logging.getLogger(__name__)

TRAINER_KEYS = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
# Set here from the rest of the config; not to be given in conf/trainer.
MANAGED_TRAINER_KEYS = {"callbacks", "logger", "default_root_dir", "use_distributed_sampler"}


def plain(cfg: DictConfig | dict) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


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


def resolve_ckpt_path(ckpt_path: str | None, name: str, run_dir: str | None) -> str | None:
    """``last``: the newest last.ckpt of run_dir, or of runs/<name>/*/; a path must exist."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        pattern = (Path(run_dir), "checkpoints/last.ckpt") if run_dir else (
            Path("runs", name), "*/checkpoints/last.ckpt")
        candidates = sorted(pattern[0].glob(pattern[1]), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError(f"ckpt_path=last: no {pattern[0] / pattern[1]} to resume from; "
                              "give a checkpoint path instead")
        return str(candidates[-1])
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def build(cfg: DictConfig, run_dir: Path) -> tuple[NMTDataModule, TranslationModule, L.Trainer]:
    """Check the config, prepare the data, and build the data module, model and trainer."""
    trainer_cfg = plain(cfg.trainer)
    check_trainer(trainer_cfg)
    model_cfg, optim_cfg = plain(cfg.model), plain(cfg.optim)
    if model_cfg.get("tie_src_tgt") and not cfg.tokenizer.joint:
        raise ConfigError("model.tie_src_tgt=true needs a joint vocabulary (tokenizer=spm_joint)")
    # Build the module once with a dummy vocabulary: every model/optim error shows up
    # now, before any data is touched.
    TranslationModule(8, 8, model_cfg, optim_cfg, cfg.loss.label_smoothing,
                      plain(cfg.validation), plain(cfg.test_decoding))

    dm = NMTDataModule(plain(cfg.data), plain(cfg.tokenizer),
                       max_tokens=cfg.batching.max_tokens,
                       eval_max_tokens=cfg.batching.eval_max_tokens,
                       num_workers=cfg.batching.num_workers, seed=cfg.seed)
    dm.setup("fit")  # fetch, tokenizers, encoding: cached after the first run
    prepared = dm.prepared
    assert prepared is not None
    module = TranslationModule(prepared.src_tokenizer.vocab_size,
                               prepared.tgt_tokenizer.vocab_size, model_cfg, optim_cfg,
                               cfg.loss.label_smoothing, plain(cfg.validation),
                               plain(cfg.test_decoding), cfg.data.clean.get("max_len"))
    module.set_tokenizers(prepared.src_tokenizer, prepared.tgt_tokenizer)

    cb = cfg.callbacks
    callbacks: list[L.Callback] = [
        # The first checkpoint callback is trainer.checkpoint_callback: the best by val/bleu.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/bleu", mode="max",
                        save_top_k=cb.save_top_k, filename="best-epoch{epoch:02d}-step{step}",
                        auto_insert_metric_name=False),  # no "=" in names: Hydra overrides
        # last.ckpt, unmonitored so that it is also written before the first validation.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor=None, save_top_k=0,
                        save_last=True, every_n_train_steps=cb.every_n_train_steps),
        LearningRateMonitor(logging_interval="step"),
    ]
    if trainer_cfg.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    if cb.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor="val/bleu", mode="max",
                                       patience=cb.early_stopping_patience, strict=False))
    loggers = [CSVLogger(run_dir, name="logs", version=""),
               TensorBoardLogger(run_dir, name="tensorboard", version="")]
    try:
        trainer = L.Trainer(**trainer_cfg, callbacks=callbacks, logger=loggers,
                            default_root_dir=run_dir, use_distributed_sampler=False)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"trainer: {e}") from None
    return dm, module, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (or resume) as configured; return the final validation and test metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.name, cfg.run_dir)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    dm, module, trainer = build(cfg, run_dir)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test_after_training and "test" in dm.prepared.datasets and best:
        for result in trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False):
            metrics.update({k: float(v) for k, v in result.items()})
    if trainer.is_global_zero:
        summary = {"run_dir": str(run_dir), "best_checkpoint": best, **metrics,
                   **{k: v for k, v in module.scores.items() if k.endswith("signature")},
                   "test_decoding": plain(cfg.test_decoding)}
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
        log.info("finished: %s", json.dumps(summary))
    return metrics
