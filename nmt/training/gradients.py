"""Gradient flow: how strongly the loss reaches back to each source position, and each
layer's gradient norm over training (nmt/model/probe.py measures both).

``GradientFlow`` (``callbacks.gradient_flow.every_n_steps``, off by default) logs
``grad_norm/<layer>`` every N steps, like any metric (logs/metrics.csv, TensorBoard), and at
each validation measures the gradient at every encoder state over the first dev sentences:
``gradients.json`` and ``gradients.png`` in the run directory. ``python -m nmt.cli
gradients`` (nmt/training/gradient_report.py) does the same for checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from nmt.core.errors import ConfigError
from nmt.data.dataset import Batch
from nmt.model.encoder import RNNEncoder, sequence_mask
from nmt.model.probe import layer_gradient_norms, state_gradients
from nmt.model.seq2seq import Seq2Seq
from nmt.training.curves import Curve, read_curves, save_figure, write_atomically

PREFIX = "grad_norm/"


def profile(model: Seq2Seq, batch: Batch) -> dict[str, Any]:
    """The gradient norm at each encoder state of ``batch``, summarised (``summarize``)."""
    norms = state_gradients(model, batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
    return summarize(norms.detach().cpu(), batch.src_lengths.cpu())


def summarize(norms: torch.Tensor, lengths: torch.Tensor) -> dict[str, Any]:
    """(B, S, D) state-gradient norms (per direction) and (B,) source lengths -> plain values:
    the mean norm of the whole state's gradient by position from the first token and by
    distance from the last (EOS), the sentences long enough for each, and the mean norms at
    the first and last positions and their ratio, also per direction."""
    batch, length = norms.shape[:2]
    rows = torch.arange(batch)
    mask = sequence_mask(lengths, length)  # (B, S)
    # Row b read backwards from its last real position; past its start: zeros.
    back = (lengths.unsqueeze(1) - 1 - torch.arange(length)).clamp(min=0)  # (B, S)

    def summary(n: torch.Tensor) -> dict[str, float]:
        first, last = n[:, 0].mean(), n[rows, lengths - 1].mean()
        return {"first": float(first), "last": float(last),
                "first_last_ratio": float(first / last) if last > 0 else float("nan")}

    total = norms.pow(2).sum(2).sqrt()  # (B, S)
    counts = mask.sum(0)  # (S,)
    from_end = total.gather(1, back) * mask
    return {"sentences": batch,
            "by_position": _means(total, counts), "by_distance_from_end": _means(from_end, counts),
            "sentences_at": counts.tolist(), **summary(total),
            "directions": [summary(norms[:, :, d]) for d in range(norms.size(2))]}


def _means(values: torch.Tensor, counts: torch.Tensor) -> list[float]:
    return (values.sum(0) / counts.clamp(min=1)).tolist()


def layer_curves(curves: dict[str, Curve]) -> dict[str, Curve]:
    """The ``grad_norm/<layer>`` series of a run's logged curves, by layer."""
    return {k[len(PREFIX):]: v for k, v in curves.items() if k.startswith(PREFIX)}


def plot(profiles: Sequence[tuple[str, dict[str, Any]]], layers: dict[str, Curve],
         output: str | os.PathLike, min_sentences: int = 5) -> Path:
    """Gradient norm by source position (from the first token; from the last) for each
    labelled profile, and per-layer norms over steps when ``layers`` has any; written
    atomically. Positions fewer than ``min_sentences`` sentences reach are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if layers else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for label, found in profiles:
        counts = np.array(found["sentences_at"])
        keep = counts >= min(min_sentences, counts.max())
        for ax, key in zip(axes[0], ("by_position", "by_distance_from_end"), strict=False):
            ax.plot(np.arange(len(counts))[keep], np.array(found[key])[keep], label=label)
    axes[0][0].set(title="gradient at each encoder state", xlabel="source position",
                   ylabel="mean norm", yscale="log")
    axes[0][1].set(title="... by distance from the last (EOS)", xlabel="positions before EOS",
                   yscale="log")
    axes[0][0].legend(fontsize="small")
    if layers:
        for name, (steps, values) in layers.items():
            axes[0][2].plot(steps, values, label=name)
        axes[0][2].set(title="gradient norm per layer", xlabel="step", yscale="log")
        axes[0][2].legend(fontsize="x-small")
    return save_figure(fig, output)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """``data`` as indented JSON, written atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


class GradientFlow(L.Callback):
    """Per-layer gradient norms every ``every_n_steps`` steps (``grad_norm/<layer>``, to
    every logger (whose calls are rank 0's), after unscaling under mixed precision), and
    at each validation the gradient at each encoder state of the first ``sentences`` dev
    pairs (rank 0): ``gradients.json`` (one entry per validation) and ``gradients.png`` in
    ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike, every_n_steps: int, sentences: int = 64
                 ) -> None:
        if every_n_steps < 1 or sentences < 1:
            raise ConfigError("callbacks.gradient_flow: every_n_steps and sentences must be "
                              f"positive, got {every_n_steps} and {sentences}")
        self.run_dir, self.every, self.sentences = Path(run_dir), every_n_steps, sentences
        self.history: list[dict[str, Any]] = []
        self._batch: Batch | None = None

    def state_dict(self) -> dict[str, Any]:  # in checkpoints: a resumed run keeps its history
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if trainer.global_step % self.every == 0:
            norms = layer_gradient_norms(_model(module))
            # To the loggers directly: self.log would keep only the steps that
            # trainer.log_every_n_steps also logs.
            for logger in trainer.loggers:
                logger.log_metrics({PREFIX + k: v for k, v in norms.items()},
                                   step=trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        model = _model(module)
        if not isinstance(model.encoder, RNNEncoder):  # e.g. an image encoder
            return
        batch = self._dev_batch(trainer, module.device)
        if batch is None:
            return
        self.history.append({"step": trainer.global_step, **profile(model, batch)})
        write_json(self.history, self.run_dir / "gradients.json")
        for logger in trainer.loggers:
            logger.save()
        metrics = self.run_dir / "logs" / "metrics.csv"
        layers = layer_curves(read_curves(self.run_dir)) if metrics.is_file() else {}
        plot([(f"step {h['step']}", h) for h in self.history], layers,
             self.run_dir / "gradients.png")

    def _dev_batch(self, trainer: L.Trainer, device: torch.device) -> Batch | None:
        """The first ``sentences`` dev pairs, in the corpus' order, as one batch."""
        if self._batch is None:
            data = getattr(trainer, "datamodule", None)
            if data is None or not data.has_split("valid"):
                return None
            dataset = data.dataset("valid")
            examples = [dataset[i] for i in range(min(self.sentences, len(dataset)))]
            self._batch = data.collate_fn(examples)
        b = self._batch
        return Batch(b.src.to(device), b.src_lengths.to(device), b.tgt_in.to(device),
                     b.tgt_out.to(device), b.indices)


def _model(module: L.LightningModule) -> Seq2Seq:
    model = getattr(module, "model", None)
    if not isinstance(model, Seq2Seq):
        raise ConfigError("callbacks.gradient_flow: the LightningModule has no Seq2Seq model")
    return model
