"""Configs: every group choice and experiment composes; mistakes are one line at start-up;
loggers and callbacks plug in by Hydra ``_target_``."""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

import lightning as L
import pytest
from conftest import files_config
from omegaconf import OmegaConf
from train_helpers import ROOT, compose_train, fit_recorded, toy_overrides

from nmt.cli.config import check_overrides
from nmt.core.errors import ConfigError
from nmt.training.train import build, make_loggers


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


GROUPS = ["data", "tokenizer", "model", "optim", "trainer", "callbacks", "logger", "experiment",
          "task"]


@pytest.mark.parametrize(("group", "choice"),
                         [(g, c) for g in GROUPS for c in choices(g)])
def test_every_choice_composes_against_the_schema(group, choice):
    cfg = check_overrides("train", [f"{group}={choice}"])
    assert OmegaConf.to_container(cfg, resolve=False)  # nothing left unresolvable in shape
    assert cfg.model.cell in {"lstm", "gru", "rnn"} and cfg.callbacks.monitor.startswith("val/")


@pytest.mark.parametrize("name", ["translate", "evaluate", "prepare"])
def test_other_commands_compose(name):
    overrides = ["checkpoint=x.ckpt"] if name != "prepare" else []
    for choice in choices("decoding") if name != "prepare" else [None]:
        cfg = check_overrides(name, overrides + ([f"decoding={choice}"] if choice else []))
        assert "data" in cfg or "decoding" in cfg


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.dropuot=0.1"], "model.dropuot: unknown key; valid keys: attention, "
                            "attention_gate, attention_size, bidirectional, bridge, cell"),
    (["model.emb_size=big"], "model.emb_size: Value 'big' of type 'str' could not be "
                             "converted to Integer"),
    (["callbacks.every_n_minutes=often"], "callbacks.every_n_minutes: Value 'often'"),
    (["validation.beam=3"], "validation.beam: unknown key; valid keys: alpha, beam_size"),
    (["model=transformer"], "model=transformer: no such choice; valid choices: gru, lstm, rnn"),
    (["logger=neptune"], "logger=neptune: no such choice; valid choices: csv, mlflow, "
                         "tensorboard, wandb"),
    (["batching.max_token=1"], "batching.max_token: unknown key; valid keys: eval_max_tokens"),
])
def test_mistakes_are_one_line_with_the_valid_keys(overrides, message):
    with pytest.raises(ConfigError) as e:
        check_overrides("train", overrides)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_command_line_typo_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "trainer=debug",
                             "model.dropuot=0.1"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.dropuot: unknown key; valid keys: attention, attention_gate, "
        "attention_size, bidirectional, bridge, cell, decoder_hidden, decoder_layers, dropout, "
        "emb_size, encoder, encoder_hidden, encoder_layers, forget_bias, input_feeding, "
        "tie_embeddings, tie_src_tgt, word_dropout"]
    assert not (tmp_path / "runs").exists()


# --- extension points: a logger and a callback by _target_ ------------------------------------


class CountSteps(L.Callback):
    """A toy callback, named in a config by its import path."""

    instances: ClassVar[list[CountSteps]] = []

    def __init__(self, label: str) -> None:
        self.label, self.steps = label, 0
        CountSteps.instances.append(self)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1


def test_a_callback_from_the_command_line_trains_with_it(toy_dir, tmp_path):
    cfg = compose_train([*toy_overrides(files_config(toy_dir, tmp_path / "c"), tmp_path / "r"),
                         "trainer=debug", "+callbacks.extra.count._target_=test_config.CountSteps",
                         "+callbacks.extra.count.label=hello"])
    CountSteps.instances.clear()
    _, trainer = fit_recorded(cfg)
    [cb] = CountSteps.instances
    assert cb in trainer.callbacks and cb.label == "hello" and cb.steps == 1


def test_callback_group_swa(toy_dir, tmp_path):
    cfg = compose_train([*toy_overrides(files_config(toy_dir, tmp_path / "c"), tmp_path / "r"),
                         "callbacks=swa"])
    _, _, trainer = build(cfg, tmp_path / "r")
    names = [type(c).__name__ for c in trainer.callbacks]
    assert "StochasticWeightAveraging" in names and "ResumableCheckpoint" in names


class ListLogger(L.pytorch.loggers.Logger):
    """A toy logger that keeps what it is given."""

    def __init__(self, save_dir: str, tag: str = "") -> None:
        super().__init__()
        self.given_dir, self.tag, self.rows = save_dir, tag, []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_a_logger_by_target_gets_the_run_dir_and_the_metrics(toy_dir, tmp_path):
    run = tmp_path / "r"
    cfg = compose_train([*toy_overrides(files_config(toy_dir, tmp_path / "c"), run),
                         "trainer=debug", "trainer.fast_dev_run=false", "trainer.max_steps=2",
                         "logger=csv", "+logger.mine._target_=test_config.ListLogger",
                         "+logger.mine.tag=x"])
    _, trainer = fit_recorded(cfg)
    [mine] = [lg for lg in trainer.loggers if isinstance(lg, ListLogger)]
    assert mine.given_dir == str(run) and mine.tag == "x"
    assert any("train/loss" in m for _, m in mine.rows)
    assert (run / "logs" / "metrics.csv").is_file()  # the CSV log is always written


def test_tensorboard_logger_and_missing_packages(tmp_path):
    cfg = check_overrides("train", ["logger=tensorboard"])
    [csv, tb] = make_loggers(cfg, tmp_path, None)
    assert type(csv).__name__ == "ContinuedCSVLogger"
    assert type(tb).__name__ == "TensorBoardLogger" and tb.save_dir == str(tmp_path)
    for name, package in (("wandb", "wandb"), ("mlflow", "mlflow")):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(ConfigError, match=f"logger.{name}: "):
                make_loggers(check_overrides("train", [f"logger={name}"]), tmp_path, None)
