"""bench/data.py: its corpus generator joins the picked lines right, and its scale mode runs
end to end on a tiny corpus (prepare, then one training step) and reports sane numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from train_helpers import load_bench

ROOT = Path(__file__).resolve().parent.parent




def test_joined_block_lays_picks_end_to_end(tmp_path):
    bench = load_bench("data")
    path = tmp_path / "lines.txt"
    path.write_text("a\nbb\nccé\n")
    text, starts, lengths = bench.packed(path)
    block = bench.joined_block(text, starts, lengths, np.array([0, 2, 1, 1]), np.array([1, 3]))
    assert block.decode() == "a\nccé bb bb\n"


def test_scale_mode_on_a_tiny_corpus(shared_data, tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "data.py"), "--pairs", "2000", "--workers", "1",
           "--ranks", "1", "--corpus-dir", str(tmp_path / "corpus"), "--keep",
           str(tmp_path / "work"), "tokenizer.vocab_size=500", "model.emb_size=16",
           "model.encoder_hidden=16", "model.decoder_hidden=16"]
    env = {**os.environ, "NMT_DATA_DIR": str(shared_data)}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"date", "machine", "workers_key", "sizes"} <= set(report)
    size = report["sizes"]["2000"]
    for side in ("en", "de"):
        lines = (tmp_path / "corpus" / "2000" / f"train.{side}").read_text().splitlines()
        assert len(lines) == 2000 and all(lines)
    assert size["generate_s"] is not None and size["corpus_bytes"] > 0
    first = size["prepare"]["1"]
    assert first["tokenizer_reused"] is False and first["tokenizer_s"] > 0
    assert first["encode_s"] > 0 and first["encode_pairs_per_s"] > 0
    assert 0 < first["train_pairs"] <= 2000 and first["peak_rss_gb"] > 0.05
    assert 2 <= size["bytes_per_token"] < 4  # uint16 ids plus offsets and line numbers
    assert size["ids_bytes_per_token"] in (2.0, 4.0)  # uint16 or int32 ids
    assert 0 < size["train_first_step_s"] <= size["train_first_step_end_s"]
    assert size["train_first_step_end_s"] <= size["train_wall_s"]
    assert size["train_ranks_stepped"] == 1 and size["train_peak_rss_gb"] > 0.05
