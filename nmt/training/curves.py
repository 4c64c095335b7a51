"""Training curves from a run's ``logs/metrics.csv``: training loss, dev loss and
perplexity, dev BLEU and the learning rate, against steps (top row) and training minutes
(bottom row).

Every run draws ``curves.png`` beside ``metrics.json`` at each validation (``Curves``);
``python -m nmt.cli curves runs=[A,B,C] output=cmp.png`` overlays several runs, each
labelled by the settings in which their configs differ (``model.cell=gru``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import OmegaConf

from nmt.core.errors import ConfigError
from nmt.training.loggers import read_rows

PANELS = (("train/loss", "training loss"), ("val/loss", "dev loss"),
          ("val/ppl", "dev perplexity"), ("val/bleu", "dev BLEU"), ("lr", "learning rate"))
MINUTES = "val/train_minutes"
Curve = tuple[np.ndarray, np.ndarray]  # (steps, values)


def read_curves(run_dir: str | os.PathLike) -> dict[str, Curve]:
    """Each logged series of a run by name (``lr``: the first optimizer's learning rate)."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no logs/metrics.csv (not a run directory?)")
    series: dict[str, list[tuple[float, float]]] = {}
    rows = read_rows(path)
    rates = sorted(k for k in (rows[0] if rows else {}) if k.startswith("lr-"))
    rename = {rates[0]: "lr"} if rates else {}
    for row in rows:
        if not row.get("step"):
            continue
        step = float(row["step"])
        for key, value in row.items():
            if value and key != "step" and (not key.startswith("lr-") or key in rename):
                series.setdefault(rename.get(key, key), []).append((step, float(value)))
    return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v]))
            for k, v in series.items()}


def in_minutes(curves: dict[str, Curve], steps: np.ndarray) -> np.ndarray | None:
    """Training minutes at ``steps``, interpolated from the validations' record of them."""
    if MINUTES not in curves or len(curves[MINUTES][0]) == 0:
        return None
    known_steps, minutes = curves[MINUTES]
    return np.interp(steps, np.concatenate([[0], known_steps]), np.concatenate([[0], minutes]))


def labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's label: the config values in which the runs differ (model first), else
    the run directory's name."""
    configs = []
    for run in run_dirs:
        path = run / "config.yaml"
        configs.append(OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {})
    return differences(configs, [run.name for run in run_dirs])


def differences(configs: Sequence[Any], names: Sequence[str]) -> list[str]:
    """Labels for several configs (nested dicts): the values in which they differ (model
    first, at most three), else ``names``."""
    flat = [_flatten(config) for config in configs]
    keys = sorted({k for f in flat for k in f}, key=lambda k: (not k.startswith("model."), k))
    differing = [k for k in keys if k not in ("run_dir", "name", "ckpt_path")
                 and len({str(f.get(k)) for f in flat}) > 1]
    if len(configs) < 2 or not differing:
        return list(names)
    return [", ".join(f"{k}={f.get(k)}" for k in differing[:3]) for f in flat]


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix[:-1]: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def plot_runs(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """One figure of the runs' curves (overlaid), written atomically to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ConfigError("curves: runs is empty; give one or more run directories")
    fig, axes = plt.subplots(2, len(PANELS), figsize=(4 * len(PANELS), 6.5), squeeze=False)
    for run, label in zip(runs, labels(runs), strict=True):
        curves = read_curves(run)
        for column, (key, _) in enumerate(PANELS):
            if key not in curves:
                continue
            steps, values = curves[key]
            axes[0][column].plot(steps, values, label=label)
            minutes = in_minutes(curves, steps)
            if minutes is not None:
                axes[1][column].plot(minutes, values, label=label)
    for column, (key, title) in enumerate(PANELS):
        axes[0][column].set(title=title, xlabel="step")
        axes[1][column].set(title=title, xlabel="training minutes")
        if key in ("lr", "val/ppl"):
            axes[0][column].set_yscale("log")
            axes[1][column].set_yscale("log")
    axes[0][0].legend(fontsize="small")
    return save_figure(fig, output)


def output_file(output: str | os.PathLike) -> Path:
    """``output`` as a file to write: not a folder, its folder made; else a ConfigError."""
    path = Path(output)
    if path.is_dir():
        raise ConfigError(f"output={output} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output={output}: cannot make its folder "
                          f"({e.strerror or type(e).__name__})") from None
    return path


def write_atomically(output: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)``, then tmp renamed to ``output``: a reader never sees half a file. On
    an OSError the temporary file goes, the previous ``output`` stays, a ConfigError says
    which file."""
    path = output_file(output)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path} ({e.strerror or type(e).__name__})") from None
    return path


def save_figure(fig: Any, output: str | os.PathLike) -> Path:
    """A matplotlib figure as a PNG at ``output`` (``write_atomically``), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        return write_atomically(output, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    finally:
        plt.close(fig)


class Curves(L.Callback):
    """Draws ``run_dir/curves.png`` after every validation and at the end of training
    (rank 0; the CSV logger's rows are flushed first)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._draw(trainer)

    def _draw(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()
        if (self.run_dir / "logs" / "metrics.csv").is_file():
            plot_runs([self.run_dir], self.run_dir / "curves.png")
