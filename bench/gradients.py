"""Gradient flow on real data: does a tanh RNN forget the start of the source, and do LSTM,
GRU and attention help? (docs/training.md#gradient-flow)

    python bench/gradients.py [--runs-dir runs/gradients] [--steps 500]
                              [--cells rnn gru lstm] [train.py overrides]

For each cell (rnn = tanh, gru, lstm) and attention (none, bahdanau): ``python train.py
model.cell=C model.attention=A model.bidirectional=false`` on Multi30k en->de for the same
fixed number of steps (seed 1; validation at the half and at the end, with
``callbacks.gradient_flow`` logging per-layer gradient norms), into RUNS_DIR/C-A (a run with
metrics.json is reused). Then ``python -m nmt.cli gradients`` on its last checkpoint over the
first 64 dev sentences, trained and with fresh weights (``untrained=true``), and all six
trained profiles overlaid in RUNS_DIR/profiles.png.

The ratio reported is the mean gradient norm at the first source position over that at the
last (EOS, the state the decoder's first state is made from): near 1, the loss reaches the
start of the sentence as strongly as its end; far below 1, the gradient vanished on its way.
The last line printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ATTENTIONS = ("none", "bahdanau")
MODEL = ["model.bidirectional=false", "model.emb_size=256", "model.encoder_hidden=256",
         "model.decoder_hidden=256", "model.input_feeding=false", "model.dropout=0.2",
         "tokenizer=spm_joint", "model.tie_src_tgt=true", "optim.lr=0.002"]


def train(run_dir: Path, steps: int, overrides: list[str]) -> dict[str, Any]:
    """metrics.json of a train.py run (trained unless it is there)."""
    summary = run_dir / "metrics.json"
    if not summary.is_file():
        subprocess.run([sys.executable, str(ROOT / "train.py"), f"run_dir={run_dir}",
                        "data=multi30k_en_de", *MODEL, f"trainer.max_steps={steps}",
                        "trainer.max_epochs=100", "trainer.check_val_every_n_epoch=null",
                        f"trainer.val_check_interval={steps // 2}",
                        "callbacks.early_stopping_patience=null",
                        f"callbacks.gradient_flow.every_n_steps={max(steps // 50, 1)}",
                        "test_after_training=false", "trainer.enable_progress_bar=false",
                        *overrides], check=True)
    return json.loads(summary.read_text())


def gradients(checkpoints: list[str], output: Path, *more: str) -> dict[str, Any]:
    """The gradients command's JSON report for ``checkpoints`` (overlaid in ``output``)."""
    subprocess.run([sys.executable, "-m", "nmt.cli", "gradients",
                    f"checkpoint=[{','.join(checkpoints)}]", "data=multi30k_en_de",
                    "split=val", f"output={output}", *more],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(output.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "gradients")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--cells", nargs="+", default=["rnn", "gru", "lstm"])
    args, overrides = parser.parse_known_args()
    runs: dict[str, str] = {}
    result: dict[str, Any] = {"steps": args.steps, "ratio": {}, "ratio_untrained": {},
                              "dev_bleu": {}, "dev_bleu_lc": {}, "first": {}, "last": {}}
    for cell in args.cells:
        for attention in ATTENTIONS:
            name = f"{cell}_{attention}"
            run_dir = args.runs_dir / f"{cell}-{attention}"
            summary = train(run_dir, args.steps,
                            [f"model.cell={cell}", f"model.attention={attention}", *overrides])
            runs[name] = str(run_dir / "checkpoints" / "last.ckpt")
            trained = gradients([runs[name]], run_dir / "gradients-trained.png")["models"][0]
            fresh = gradients([runs[name]], run_dir / "gradients-untrained.png",
                              "untrained=true")["models"][0]
            result["ratio"][name] = float(f"{trained['first_last_ratio']:.4g}")
            result["ratio_untrained"][name] = float(f"{fresh['first_last_ratio']:.4g}")
            result["first"][name] = trained["first"]
            result["last"][name] = trained["last"]
            result["dev_bleu"][name] = round(summary.get("val/bleu", float("nan")), 2)
            result["dev_bleu_lc"][name] = round(summary.get("val/bleu_lc", float("nan")), 2)
            print(name, json.dumps({k: v[name] for k, v in result.items() if k != "steps"}),
                  flush=True)
    gradients(list(runs.values()), args.runs_dir / "profiles.png")
    result["figure"] = str(args.runs_dir / "profiles.png")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
