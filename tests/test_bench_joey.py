"""bench/joey.py: Joey NMT's configuration mirrors our default model, its log is read
right, and a Python without joeynmt is refused in one line (Joey itself is not one of
our dependencies, so the comparison runs by hand: docs/results.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from train_helpers import load_bench

ROOT = Path(__file__).resolve().parent.parent




def test_joey_config_mirrors_the_default_model(tmp_path):
    bench = load_bench("joey")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train")
    m = cfg.model
    joey = bench.joey_config(bench.default_config(), tmp_path / "data", tmp_path / "model",
                             steps=20)
    enc, dec = joey["model"]["encoder"], joey["model"]["decoder"]
    assert (enc["rnn_type"], dec["rnn_type"]) == (m.cell, m.cell)
    assert enc["embeddings"]["embedding_dim"] == dec["embeddings"]["embedding_dim"] == m.emb_size
    assert (enc["hidden_size"], enc["bidirectional"]) == (m.encoder_hidden, m.bidirectional)
    assert (dec["hidden_size"], dec["num_layers"]) == (m.decoder_hidden, m.decoder_layers)
    assert dec["attention"] == m.attention and dec["input_feeding"] == m.input_feeding
    assert enc["dropout"] == dec["dropout"] == m.dropout
    training = joey["training"]
    assert training["label_smoothing"] == cfg.loss.label_smoothing
    assert training["learning_rate"] == cfg.optim.lr
    assert 2 * training["batch_size"] == cfg.batching.max_tokens
    assert (training["updates"], training["logging_freq"]) == (40, 20)


def test_reads_the_measured_window_of_joeys_log():
    bench = load_bench("joey")
    log = ("2026-11-30 13:06:19 - INFO - joeynmt.training - Epoch   1, Step:       20, "
           "Batch Loss:    84.2, Batch Acc: 0.15, Tokens per Sec:      465, Lr: 0.002\n"
           "2026-11-30 13:06:30 - INFO - joeynmt.training - Epoch   1, Step:       40, "
           "Batch Loss:    80.1, Batch Acc: 0.16, Tokens per Sec:      501, Lr: 0.002\n")
    assert bench.window_tokens_per_s(log, 40) == 501.0
    assert bench.window_tokens_per_s(log, 20) == 465.0
    assert bench.window_tokens_per_s(log, 60) is None


def test_refuses_a_python_without_joeynmt():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "joey.py"),
                           "--joey-python", sys.executable], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 1
    assert "cannot import joeynmt" in done.stderr
    assert "Traceback" not in done.stderr
