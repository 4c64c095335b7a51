"""Optimizer and learning-rate scheduler from the ``optim`` config, by Hydra ``_target_``.

conf/optim/*.yaml names any optimizer class with its keyword arguments, and a nested
``scheduler`` node (null: a constant learning rate) naming any scheduler, torch's or
one of nmt.training.schedules, with Lightning's ``interval`` (``step`` or ``epoch``)::

    _target_: torch.optim.Adam
    _partial_: true
    lr: 0.002
    scheduler:
      _target_: torch.optim.lr_scheduler.ReduceLROnPlateau
      _partial_: true
      factor: 0.5
      interval: epoch

Keys are checked against the targets' own signatures, so a typo fails before any data
is touched, with the valid keys in the message.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from nmt.core.errors import ConfigError
from nmt.training.schedules import TimedCosine

HYDRA_KEYS = {"_target_", "_partial_"}
INTERVALS = ("step", "epoch")
# Schedules named by their path before nmt/ was split into packages (configs and
# checkpoints written then): nmt.schedules.X is nmt.training.schedules.X.
MOVED = {"nmt.schedules.": "nmt.training.schedules."}


def _current(scheduler: Any) -> Any:
    """The scheduler config with its ``_target_`` under today's module path."""
    path = scheduler.get("_target_") if isinstance(scheduler, Mapping) else None
    for old, new in MOVED.items():
        if isinstance(path, str) and path.startswith(old):
            return {**scheduler, "_target_": new + path[len(old):]}
    return scheduler


def check_optim(optim: dict[str, Any], time_limit: bool = True) -> None:
    """Refuse a bad optimizer or scheduler config: build both for one dummy parameter.
    ``time_limit``: whether the run has one (trainer.max_time), as TimedCosine needs."""
    made = build_optimizer(optim, [torch.nn.Parameter(torch.zeros(1))], ("val/bleu", "max"),
                           total_steps=lambda: 1)
    if isinstance(made, dict) and isinstance(made["lr_scheduler"]["scheduler"], TimedCosine) \
            and not time_limit:
        raise ConfigError(TimedCosine.NO_TIME_LIMIT)


def follows_metric(optim: dict[str, Any]) -> bool:
    """Whether the scheduler steps on a validation metric (ReduceLROnPlateau)."""
    scheduler = _current(optim.get("scheduler"))
    if not scheduler:
        return False
    target = _target(scheduler, "optim.scheduler")
    return isinstance(target, type) and issubclass(target, ReduceLROnPlateau)


def build_optimizer(optim: dict[str, Any], params: Iterable[Any], monitor: tuple[str, str],
                    total_steps: Callable[[], int | float]) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for this config.

    ``monitor`` is the (metric, "max"/"min") a plateau scheduler follows; ``total_steps``
    gives the run's length to a scheduler whose ``total_steps`` the config leaves null.
    """
    cfg = dict(optim)
    scheduler_cfg = _current(cfg.pop("scheduler", None))
    optimizer = _make(cfg, "optim", params, check=_is_optimizer)
    if not scheduler_cfg:
        return optimizer
    return {"optimizer": optimizer,
            "lr_scheduler": _scheduler(dict(scheduler_cfg), optimizer, monitor, total_steps)}


def _scheduler(cfg: dict[str, Any], optimizer: Optimizer, monitor: tuple[str, str],
               total_steps: Callable[[], int | float]) -> dict[str, Any]:
    """Lightning's scheduler config: the scheduler, its interval, and its metric if any."""
    where = "optim.scheduler"
    interval = cfg.pop("interval", "epoch")
    if interval not in INTERVALS:
        raise ConfigError(f"{where}.interval must be one of {', '.join(INTERVALS)}, "
                          f"got {interval!r}")
    extra: dict[str, Any] = {}
    if follows_metric({"scheduler": cfg}):
        if "mode" in cfg:
            raise ConfigError(f"{where}.mode: follows callbacks.monitor (max for BLEU/chrF, "
                              "min for loss/ppl); remove it")
        extra["mode"] = monitor[1]
    if "total_steps" in (_keywords(cfg, where) or ()) and cfg.get("total_steps") is None:
        cfg["total_steps"] = total_steps()
    scheduler = _make(cfg, where, optimizer, check=_is_scheduler, **extra)
    config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
    if extra:
        config.update(monitor=monitor[0], strict=False)  # no such metric yet: not an error
    return config


def _make(cfg: dict[str, Any], where: str, first: Any, check: Callable[[Any], bool],
          **extra: Any) -> Any:
    """``cfg``'s target called with ``first`` (the parameters, or the optimizer)."""
    valid = _keywords(cfg, where)
    unknown = set() if valid is None else set(cfg) - HYDRA_KEYS - valid
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} for {cfg['_target_']}; "
                          f"valid keys: {', '.join(sorted(valid or ()))}")
    if where == "optim" and not cfg.get("lr", 1.0) > 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.get('lr')}")
    try:
        # Partial whatever the config says: the parameters (the optimizer) come only now.
        made = instantiate(cfg, _partial_=True, _convert_="all")(first, **extra)
    except InstantiationException as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {cfg['_target_']}: {e}") from None
    if not check(made):
        raise ConfigError(f"{where}._target_: {cfg['_target_']} made a {type(made).__name__}, "
                          f"not {'an optimizer' if where == 'optim' else 'a scheduler'}")
    return made


def _is_optimizer(made: Any) -> bool:
    return isinstance(made, Optimizer)


def _is_scheduler(made: Any) -> bool:
    return isinstance(made, (LRScheduler, ReduceLROnPlateau))


def _target(cfg: dict[str, Any], where: str) -> Any:
    """The class or function ``cfg["_target_"]`` names."""
    path = cfg.get("_target_")
    if not isinstance(path, str) or not path:
        example = "torch.optim.Adam" if where == "optim" else "nmt.training.schedules.warmup_cosine"
        raise ConfigError(f"{where}: no _target_; name one, e.g. {example}")
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{where}: unknown _target_ {path!r}") from None


def _keywords(cfg: dict[str, Any], where: str) -> set[str] | None:
    """The keyword arguments the target takes after its first (None: any, it has **kwargs)."""
    try:
        params = list(inspect.signature(_target(cfg, where)).parameters.values())[1:]
    except (TypeError, ValueError):  # a module, a constant, a builtin without a signature
        raise ConfigError(f"{where}._target_: {cfg['_target_']} cannot be called") from None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is not p.VAR_POSITIONAL}
