"""Fine-tuning: a new run that starts from a trained model (``init_from=model.ckpt``).

The checkpoint (a run's, or an average of several) gives the architecture, the tokenizers
and the initial weights; the run's config gives everything else.

- ``model.*`` becomes the checkpoint's model config, except the options that change how
  the model trains but not its parameters (TRAINING_OPTIONS: dropout; an image encoder's
  freeze and encoder_lr), which the run's config sets. A model option given on the command
  line that differs from the checkpoint's is refused in one line: it would change the
  parameters (or, for a weights option such as ``pretrained``, not apply). One that only
  came with the composed defaults (``model: lstm``, an experiment) is replaced, with a
  note in the log. Without Hydra's record of the command line (a config composed in
  Python, as the tests do) every model option but a weights option counts as given.
- ``tokenizer.*``: the checkpoint's SentencePiece models encode the data (the encoded
  cache is keyed by their digests); ``tokenizer.joint`` or ``tokenizer.vocab_size`` given
  otherwise than theirs is refused in one line (without a record: when the config says
  otherwise); the other settings only train a tokenizer, and none is trained.
  ``tokenizer.sampling.*`` (how training segments, not the model) applies.
- the weights are loaded (strictly) into the new module by the builders, before the data
  module computes a frozen encoder's features.

Optimizer, schedule, step counter and loggers start afresh in a new run directory.
``ckpt_path`` resumes a run instead; given with init_from (the resume command of a
preempted fine-tuning run), it must be a checkpoint of a run that started from the same
model, and resumes it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from nmt.core.errors import CheckpointError, ConfigError, TokenizerError
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.checkpoints import load_checkpoint
from nmt.model.registry import ENCODERS, model_from_checkpoint

log = logging.getLogger(__name__)

# Model options that change how the model trains, not its parameters: the run sets them.
TRAINING_OPTIONS = ("dropout", "encoder_lr", "freeze")
TASK_OF_ENCODER = {"image": "caption"}  # every other encoder reads text
KINDS = {"translate": "translation", "caption": "captioning"}


@dataclass(frozen=True)
class InitFrom:
    """A checkpoint's model to start from: its model config, tokenizers and weights."""

    path: str
    config: dict[str, Any]  # the model config with every option (the checkpoint's record)
    src_tokenizer: Tokenizer | None  # None: a captioning model
    tgt_tokenizer: Tokenizer  # the very object src_tokenizer is, for a joint vocabulary
    weights: dict[str, torch.Tensor]  # the model's state_dict

    @property
    def task(self) -> str:
        return TASK_OF_ENCODER.get(self.config["encoder"], "translate")

    @property
    def tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        """(source, target) of a translation model."""
        assert self.src_tokenizer is not None, "a captioning model has no source tokenizer"
        return self.src_tokenizer, self.tgt_tokenizer

    def load_into(self, model: nn.Module) -> None:
        """The checkpoint's weights into ``model``, which must have exactly its parameters."""
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise CheckpointError(f"init_from={self.path}: the weights do not fit the model "
                                  f"({detail[:300]})") from None


def load_init(path: str) -> InitFrom:
    """The model of checkpoint ``path``, checked to rebuild (a CheckpointError otherwise)."""
    if not Path(path).is_file():
        raise ConfigError(f"init_from={path}: no such checkpoint file")
    ckpt = load_checkpoint(path)  # a truncated or foreign file: CheckpointError
    model = model_from_checkpoint(ckpt, f"init_from={path}")
    assert model.record is not None
    spm = ckpt["tokenizers"]
    try:
        tgt = Tokenizer(spm["tgt"])
        src = (None if spm.get("src") is None else tgt if spm["src"] == spm["tgt"]
               else Tokenizer(spm["src"]))
    except TokenizerError as e:
        raise CheckpointError(f"init_from={path}: {e}") from None
    return InitFrom(path, copy.deepcopy(model.record["config"]), src, tgt, model.state_dict())


def start_from(cfg: DictConfig) -> tuple[DictConfig, InitFrom | None]:
    """``cfg`` as a run fine-tuning ``cfg.init_from`` uses it, and that checkpoint's model;
    ``(cfg, None)`` without init_from."""
    path = cfg.get("init_from")
    if path in (None, ""):
        return cfg, None
    init = load_init(str(path))
    if cfg.task != init.task:
        raise ConfigError(f"init_from={path}: a {KINDS[init.task]} checkpoint, but "
                          f"task={cfg.task}; fine-tune it with task={init.task}")
    cfg = run_config(cfg, init, command_line())
    log.info("fine-tuning %s: its architecture, tokenizers and weights; a fresh optimizer "
             "and schedule", path)
    return cfg, init


def command_line() -> frozenset[str] | None:
    """The keys the command line set (``model.cell``; ``model`` for a group choice), from
    Hydra's record of it; None for a config composed without it."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not under @hydra.main
        return None
    return frozenset(override_key(o) for o in overrides)


def override_key(override: str) -> str:
    """``model.cell`` of ``model.cell=gru``, ``+model.cell=gru`` or ``~model.cell``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _given(given: frozenset[str] | None, key: str) -> bool:
    """Whether the command line set ``key`` (its group's choice, or a part of it)."""
    if given is None:
        return True
    group = key.split(".", 1)[0]
    return group in given or any(g == key or g.startswith(key + ".") for g in given)


def _show(value: Any) -> str:
    """A value as the command line writes it."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def run_config(cfg: DictConfig, init: InitFrom, given: frozenset[str] | None) -> DictConfig:
    """A copy of ``cfg`` with the checkpoint's model config and joint flag (see the module
    docstring); ``given``: the keys the command line set (None: every model option)."""
    check_tokenizer_settings(cfg, init, given)
    ours: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore
    entry = ENCODERS[init.config["encoder"]]
    # The weights are init_from's: a weights option (a pretrained file) has nothing to do.
    model = {**init.config, **{k: entry.defaults[k] for k in entry.weights_options}}
    free = [k for k in TRAINING_OPTIONS if k in model]
    replaced = []
    for key, theirs in model.items():
        if key in free:
            model[key] = ours.get(key, theirs)
            continue
        if ours.get(key) == theirs:
            continue
        weights = key in entry.weights_options  # refused only when the command line says so
        if _given(given, f"model.{key}") and not (weights and given is None):
            why = ("init_from gives the initial weights" if weights else
                   f"fine-tuning keeps the architecture of init_from={init.path}, whose "
                   f"{key} is {_show(theirs)}")
            raise ConfigError(f"model.{key}={_show(ours.get(key))}: {why}; leave it out "
                              f"(model.{', model.'.join(free)} may change)")
        replaced.append(f"{key}={_show(theirs)}")
    if replaced:
        log.info("init_from: the checkpoint's model options %s replace the config's",
                 ", ".join(replaced))
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, value in model.items():
            out.model[key] = value
        if init.src_tokenizer is not None:
            out.tokenizer.joint = init.src_tokenizer is init.tgt_tokenizer
    return out


def check_tokenizer_settings(cfg: DictConfig, init: InitFrom, given: frozenset[str] | None
                             ) -> None:
    """The checkpoint's tokenizers encode the data: ``tokenizer.joint`` and
    ``tokenizer.vocab_size``, where given (None: both), must be theirs; the other settings
    only train a tokenizer, and none is trained (``tokenizer.sampling`` applies)."""
    tokenizers = [t for t in (init.src_tokenizer, init.tgt_tokenizer) if t is not None]
    sizes = sorted({t.vocab_size for t in tokenizers})
    joint = init.src_tokenizer is init.tgt_tokenizer
    size = cfg.tokenizer.vocab_size
    # Captions lower a vocab_size larger than they allow (nmt.data.captioning).
    fits = size in sizes or (init.task == "caption" and size > sizes[-1])
    for key, ok, theirs in [("joint", init.task == "caption" or cfg.tokenizer.joint == joint,
                             joint), ("vocab_size", fits, "/".join(map(str, sizes)))]:
        if not ok and _given(given, f"tokenizer.{key}"):
            raise ConfigError(f"tokenizer.{key}={_show(cfg.tokenizer[key])}: init_from="
                              f"{init.path} encodes the data with its own tokenizers, whose "
                              f"{key} is {_show(theirs)}; leave it out")
    if given is None or any(k.split(".")[0] == "tokenizer" for k in given):
        log.info("init_from: the checkpoint's tokenizers encode the data; no tokenizer is "
                 "trained (tokenizer.* other than sampling is not used)")


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    entry = ENCODERS.get(config.get("encoder", "rnn"))
    skipped = {*TRAINING_OPTIONS, *(entry.weights_options if entry else ())}
    return {k: v for k, v in config.items() if k not in skipped}


def check_resume(init: InitFrom, path: str) -> None:
    """With init_from, ``ckpt_path`` must be of a run that started from that model (same
    tokenizers and architecture): it is then resumed; otherwise a ConfigError."""
    ckpt = load_checkpoint(path)
    spm = ckpt["tokenizers"]
    src = init.src_tokenizer.model_proto if init.src_tokenizer is not None else None
    config = ((ckpt.get("model_record") or {}).get("config")
              or ckpt["hyper_parameters"].get("model") or {})
    if (spm.get("src") != src or spm["tgt"] != init.tgt_tokenizer.model_proto
            or _architecture(config) != _architecture(init.config)):
        raise ConfigError(f"ckpt_path={path} and init_from={init.path} contradict: the "
                          "checkpoint to resume is not of a run that started from that model; "
                          "give init_from alone to fine-tune (a new run), ckpt_path alone to "
                          "resume")
