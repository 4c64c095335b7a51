"""``python -m nmt.cli gradients checkpoint=... output=g.png`` (conf/gradients.yaml): the
gradient at each encoder state, by source position, over the first dev sentences, for one
checkpoint or several overlaid (labelled by how their models differ), trained or with
fresh weights (``untrained=true``); the numbers in a JSON file beside the figure. With one
checkpoint whose run logged ``grad_norm/<layer>`` (``callbacks.gradient_flow``), the
figure also shows each layer's gradient norm over the steps."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.core.errors import CheckpointError, ConfigError, DataError
from nmt.data.corpus import read_lines
from nmt.data.dataset import Batch, collate
from nmt.data.test_sets import resolve_test_sets
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.checkpoints import load_checkpoint
from nmt.model import build_model, model_from_checkpoint
from nmt.model.seq2seq import Seq2Seq
from nmt.training.curves import Curve, differences, output_file, read_curves
from nmt.training.gradients import layer_curves, plot, profile, write_json

MAX_SRC_LEN = 250  # source pieces kept per sentence, as translation keeps them


def run(cfg: Any) -> dict[str, Any]:
    paths = [cfg.checkpoint] if isinstance(cfg.checkpoint, str) else list(cfg.checkpoint)
    if not paths:
        raise ConfigError("checkpoint: an empty list; give one checkpoint or several")
    if not isinstance(cfg.sentences, int) or cfg.sentences < 1:
        raise ConfigError(f"sentences must be a positive integer, got {cfg.sentences!r}")
    output_file(cfg.output)  # a bad output fails before the work
    sources, targets = dev_sentences(cfg)
    found, configs = [], []
    for path in map(str, paths):
        model, tokenizers = load(path, cfg.untrained, cfg.seed)
        found.append(profile(model, make_batch(tokenizers, sources, targets)))
        configs.append({"model": model.record["config"] if model.record else {}})
    names = [Path(p).stem for p in paths]
    if len(set(names)) < len(names):  # runs/X/checkpoints/last.ckpt -> X/last
        names = [f"{Path(p).resolve().parent.parent.name}/{Path(p).stem}" for p in paths]
    labels = differences(configs, names)
    layers = run_layers(Path(paths[0])) if len(paths) == 1 else {}
    output = plot(list(zip(labels, found, strict=True)), layers, cfg.output)
    report = {"sentences": len(sources), "untrained": bool(cfg.untrained),
              "models": [{"checkpoint": str(p), "label": label, **f}
                         for p, label, f in zip(paths, labels, found, strict=True)]}
    json_path = write_json(report, output.with_suffix(".json"))
    return {"output": str(output), "json": str(json_path),
            "first_last_ratio": {label: float(f"{f['first_last_ratio']:.4g}")
                                 for label, f in zip(labels, found, strict=True)}}


def dev_sentences(cfg: Any) -> tuple[list[str], list[str]]:
    """The first ``cfg.sentences`` pairs of the one test set src/ref or data/split name."""
    sets = resolve_test_sets(cfg)
    if len(sets) != 1:
        raise ConfigError(f"gradients reads one split, not {len(sets)}: {', '.join(sets)}")
    files = next(iter(sets.values()))
    sources = list(itertools.islice(read_lines(files.src), cfg.sentences))
    targets = list(itertools.islice(read_lines(files.tgt), cfg.sentences))
    if len(sources) != len(targets):
        raise DataError(f"{files.src} and {files.tgt} differ in length")
    return sources, targets


def load(path: str, untrained: bool, seed: int) -> tuple[Seq2Seq, tuple[Tokenizer, Tokenizer]]:
    """A checkpoint's model (or the same architecture with fresh weights from ``seed``)
    and its source and target tokenizers."""
    if Path(path).is_dir():
        raise CheckpointError(f"{path}: an exported model (a directory); gradient flow needs "
                              "the .ckpt checkpoint it was exported from")
    ckpt = load_checkpoint(path)
    if not ckpt["tokenizers"].get("src"):
        raise CheckpointError(f"{path}: an image captioning model; gradient flow needs a "
                              "recurrent text encoder")
    model = model_from_checkpoint(ckpt, path)
    if untrained:
        torch.manual_seed(seed)
        record = model.record or {}
        model = build_model(record["config"], record["src_vocab_size"],
                            record["tgt_vocab_size"], record["pad_id"])
    tokenizers = Tokenizer(ckpt["tokenizers"]["src"]), Tokenizer(ckpt["tokenizers"]["tgt"])
    return model, tokenizers


def make_batch(tokenizers: tuple[Tokenizer, Tokenizer], sources: list[str],
               targets: list[str]) -> Batch:
    src_ids = tokenizers[0].encode(sources)
    tgt_ids = tokenizers[1].encode(targets)
    return collate([(i, np.array(s[:MAX_SRC_LEN], dtype=np.int64), np.array(t, dtype=np.int64))
                    for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True))])


def run_layers(checkpoint: Path) -> dict[str, Curve]:
    """The per-layer gradient norms its run logged (runs/X/checkpoints/C.ckpt -> runs/X)."""
    run_dir = checkpoint.resolve().parent.parent
    if not (run_dir / "logs" / "metrics.csv").is_file():
        return {}
    return layer_curves(read_curves(run_dir))
