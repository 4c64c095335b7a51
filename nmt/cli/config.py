"""Structured configs: the schema of ``conf/train.yaml``, registered with Hydra.

Every node whose keys are ours has a typed schema, so that a misspelt key or a
value of the wrong type fails when the config is composed, before anything runs.
Nodes whose keys belong to another library stay open and are checked where they
are used: ``trainer`` (keyword arguments of lightning.Trainer), ``optim`` (those of
its ``_target_``), ``logger`` and ``callbacks.extra`` (Hydra ``_target_`` nodes).

``check_overrides`` composes a config the way the command line would and turns
a composition error into one line that names the valid keys.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.core.errors import ConfigError
from nmt.data.captioning import CaptionDataConfig
from nmt.data.prepare import DataConfig
from nmt.data.tokenizer import TokenizerConfig
from nmt.decoding.options import Decoding
from nmt.model.registry import ENCODERS, MODEL_DEFAULTS, SIZES, resolve_config

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _open_copy(cls: type, name: str, **types: Any) -> type:
    """A plain (mutable, unvalidated) dataclass with the fields, types and defaults of
    ``cls`` (a field without a default is "???", to be given); ``types`` replaces the
    type of some fields where OmegaConf needs a looser one. A nested dataclass (a
    field whose default is built by a dataclass) is opened too."""
    hints = {**typing.get_type_hints(cls), **types}
    fields = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        default: dict[str, Any] = (
            {"default": f.default} if f.default is not dataclasses.MISSING
            else {"default_factory": f.default_factory}
            if f.default_factory is not dataclasses.MISSING else {"default": MISSING})
        nested = default.get("default_factory")
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            kind = _open_copy(nested, nested.__name__)  # a frozen one would be read-only
            default = {"default_factory": kind}
        fields.append((f.name, kind, field(**default)))
    return dataclasses.make_dataclass(name, fields)


def _model_schema(encoder: str) -> type:
    # The options of a model with this encoder, from the registry itself: types from the
    # defaults (an option whose default is None takes any value; the registry checks it).
    options = resolve_config({"encoder": encoder})
    fields = []
    for key, value in options.items():
        kind: Any = ((int | None) if key in SIZES and value is None
                     else Any if value is None or isinstance(value, list) else type(value))
        default = (field(default_factory=functools.partial(list, value))
                   if isinstance(value, list) else field(default=value))
        fields.append((key, kind, default))
    assert set(MODEL_DEFAULTS) <= set(options)
    return dataclasses.make_dataclass(f"{encoder.capitalize()}ModelConfig", fields)


DecodingConfig = _open_copy(Decoding, "DecodingConfig")
# character_coverage is auto or a number: OmegaConf 2.3 takes no unions.
TokenizerSchema = _open_copy(TokenizerConfig, "TokenizerConfig", character_coverage=Any)
# data.files holds {src, tgt} pairs whose paths may be null (an absent test split).
DataSchema = _open_copy(DataConfig, "DataConfig", files=dict[str, Any])
CaptionDataSchema = _open_copy(CaptionDataConfig, "CaptionDataConfig",
                               splits=dict[str, Any], csv=dict[str, Any])


@dataclass
class BatchingConfig:
    max_tokens: int = 4096
    eval_max_tokens: int = 8192
    num_workers: int = 0


@dataclass
class LossConfig:
    label_smoothing: float = 0.1
    doubly_stochastic: float = 0.0  # Xu et al.'s attention regulariser (captioning)


@dataclass
class GradientFlowConfig:
    """nmt/training/gradients.py: off unless every_n_steps is set."""

    every_n_steps: int | None = None
    sentences: int = 64


@dataclass
class CallbacksConfig:
    monitor: str = "val/bleu"
    early_stopping_patience: int | None = 8
    keep_best: int = 1
    keep_last: int = 0
    every_n_minutes: float | None = 10.0
    every_n_train_steps: int | None = None
    slurm_auto_requeue: bool = True
    gradient_flow: GradientFlowConfig = field(default_factory=GradientFlowConfig)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricsConfig:
    bleu_tokenize: str | None = None  # sacrebleu's tokenizer; None: its choice for tgt_lang


@dataclass
class ShortlistConfig:
    """The lexical shortlist table every checkpoint carries (nmt/decoding/shortlist.py)."""

    enabled: bool = True
    per_source: int = 20
    frequent: int = 200


@dataclass
class TrainConfig:
    # data and model take the schema their config file names (schema_text, schema_rnn, ...):
    # text and image data, text and image encoders have different keys.
    data: Any = None
    tokenizer: TokenizerSchema = field(default_factory=TokenizerSchema)  # type: ignore[valid-type]
    model: Any = None
    optim: Any = None
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: dict[str, Any] = field(default_factory=dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shortlist: ShortlistConfig = field(default_factory=ShortlistConfig)
    validation: DecodingConfig = field(  # type: ignore[valid-type]
        default_factory=DecodingConfig)
    test_decoding: DecodingConfig = field(  # type: ignore[valid-type]
        default_factory=DecodingConfig)
    task: str = "translate"  # translate | caption (set by the task group)
    name: str = "???"
    seed: int = 1
    run_dir: str | None = None
    ckpt_path: str | None = None
    init_from: str | None = None  # fine-tune: a checkpoint's model (nmt.training.finetune)
    test_after_training: bool = True


def register() -> None:
    """Make ``train_schema`` known to Hydra (conf/train.yaml starts from it), and the
    schemas that files of the data and model groups name in their defaults: schema_text
    and schema_captions for data, schema_<encoder> for every registered encoder."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="data", name="schema_text", node=DataSchema)
    store.store(group="data", name="schema_captions", node=CaptionDataSchema)
    for encoder in ENCODERS:
        store.store(group="model", name=f"schema_{encoder}", node=_model_schema(encoder))


register()


# -- errors as one line ---------------------------------------------------------------------


def _valid_keys(cfg: DictConfig, node: str) -> list[str]:
    value = OmegaConf.select(cfg, node) if node else cfg
    return sorted(str(k) for k in value) if isinstance(value, DictConfig) else []


def explain(error: Exception, base: DictConfig | None) -> str:
    """One line for a Hydra/OmegaConf composition error, with the valid keys when a key
    is unknown (looked up in ``base``, the config composed without overrides)."""
    text = str(error)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = [o for o in re.findall(r"^\t(\S+)$", text.split("Config search path")[0],
                                         re.M) if not o.startswith("schema_")]  # ours
        return f"{group}={option}: no such choice; valid choices: {', '.join(options)}"
    full_key = re.search(r"full_key: (\S+)", text) or re.search(
        r"Could not (?:override|append to) '([^']+)'", text)
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    key = full_key.group(1) if full_key else None
    if key and ("not in" in text or "not in struct" in text or "Could not" in first):
        parent, _, name = key.rpartition(".")
        valid = _valid_keys(base, parent) if base is not None else []
        if valid and name not in valid:
            return f"{key}: unknown key; valid keys: {', '.join(valid)}"
    cause = re.search(r"^(Value .*?|Invalid value .*?)$", text, re.M)
    reason = cause.group(1) if cause else first
    return f"{key}: {reason}" if key and key not in reason else reason


def check_overrides(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``config_name`` with ``overrides`` as the command line would; a ConfigError
    with one line if that fails."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            return compose(config_name=config_name, overrides=overrides)
        except (OmegaConfBaseException, ValueError, KeyError) as e:
            error: Exception = e
        except Exception as e:  # Hydra's ConfigCompositionException and kin
            error = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
        # The valid keys: those of the config with the same group choices (task=caption
        # brings an image model and its keys), or else of the plain config.
        choices = [o for o in overrides if "." not in o.split("=")[0].lstrip("+~")]
        base = None
        for base_overrides in (choices, []):
            try:
                base = compose(config_name=config_name, overrides=base_overrides)
                break
            except Exception:  # a broken choice or config: fewer or no keys to offer
                continue
    raise ConfigError(explain(error, base))
