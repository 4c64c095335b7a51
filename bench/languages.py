"""Other languages on real data: the gettext corpora (software messages; docs/data.md) into
Chinese, Japanese, Korean and German, and fine-tuning a Multi30k model on one of them.

    python bench/languages.py [--pairs zh ja ko de] [--runs-dir runs/languages]
                              [--base MULTI30K.ckpt] [--finetune-minutes 5]
                              [train.py overrides]

Per pair: ``python train.py experiment=gettext_demo data=gettext_en_XX`` (8 minutes of
training) into RUNS_DIR/en-XX (a run with metrics.json is reused), then its best
checkpoint on the test split with evaluate.py twice: BLEU with the target language's
tokenizer (sacrebleu's choice: zh, ja-mecab, ko-mecab, 13a) and chrF, and BLEU with 13a
(``metrics.bleu_tokenize=13a``), the wrong tokenizer for zh/ja/ko, for contrast.

With ``--base`` (a Multi30k en->de checkpoint): its gettext en-de and Multi30k
test_2016_flickr BLEU, then ``python train.py init_from=BASE experiment=gettext_demo
data=gettext_en_de trainer.max_time=...`` (``--finetune-minutes``) into
RUNS_DIR/finetune, and the same two scores of the fine-tuned model (how much it learnt,
how much it forgot). Beam 5 throughout. NMT_DATA_DIR must hold gettext/ and multi30k/.
The last line printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def train(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """metrics.json of a train.py run (trained unless it is there)."""
    summary = run_dir / "metrics.json"
    if not summary.is_file():
        subprocess.run([sys.executable, str(ROOT / "train.py"), f"run_dir={run_dir}",
                        "trainer.enable_progress_bar=false", *overrides], check=True)
    return json.loads(summary.read_text())


def evaluate(checkpoint: str, data: str, split: str, out_dir: Path, *more: str
             ) -> dict[str, Any]:
    """evaluate.py's report entry of ``checkpoint`` on ``split`` of ``data`` (beam 5)."""
    subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"checkpoint={checkpoint}",
                    f"data={data}", f"split={split}", f"output_dir={out_dir}",
                    "progress=false", *more], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out_dir / "report.json").read_text())[0]


def scores(checkpoint: str, data: str, split: str, out_dir: Path) -> dict[str, Any]:
    """BLEU (the language's tokenizer) and chrF, and BLEU with 13a beside them."""
    own = evaluate(checkpoint, data, split, out_dir / "own")
    plain = evaluate(checkpoint, data, split, out_dir / "13a", "metrics.bleu_tokenize=13a")
    return {"bleu": own["bleu"], "bleu_lc": own["bleu_lc"], "chrf": own["chrf"],
            "bleu_signature": own["bleu_signature"], "bleu_13a": plain["bleu"]}


def pair_result(lang: str, runs_dir: Path, overrides: list[str]) -> dict[str, Any]:
    data = f"gettext_en_{lang}"
    run_dir = runs_dir / f"en-{lang}"
    summary = train(run_dir, ["experiment=gettext_demo", f"data={data}", *overrides])
    result = scores(summary["best_checkpoint"], data, "test", run_dir / "evaluation")
    result.update(train_minutes=round(summary.get("val/train_minutes", 0.0), 2),
                  steps=summary["validations"][-1]["step"] if summary.get("validations")
                  else None, checkpoint=summary["best_checkpoint"])
    return result


def finetune_result(base: str, runs_dir: Path, minutes: float, overrides: list[str]
                    ) -> dict[str, Any]:
    out = runs_dir / "finetune"
    before = {"gettext": scores(base, "gettext_en_de", "test", out / "before-gettext"),
              "multi30k": evaluate(base, "multi30k_en_de", "test_2016_flickr",
                                   out / "before-multi30k")}
    seconds = round(minutes * 60)
    limit = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"  # DD:HH:MM:SS
    summary = train(out / "run", [f"init_from={base}", "experiment=gettext_demo",
                                  "data=gettext_en_de", f"trainer.max_time={limit}",
                                  *overrides])
    tuned = summary["best_checkpoint"]
    after = {"gettext": scores(tuned, "gettext_en_de", "test", out / "after-gettext"),
             "multi30k": evaluate(tuned, "multi30k_en_de", "test_2016_flickr",
                                  out / "after-multi30k")}
    return {"base": base, "minutes": minutes, "checkpoint": tuned,
            **{f"{corpus}_{metric}_{when}": measured[corpus][metric]
               for when, measured in (("before", before), ("after", after))
               for corpus in ("gettext", "multi30k") for metric in ("bleu", "bleu_lc")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="*", default=["zh", "ja", "ko", "de"])
    parser.add_argument("--runs-dir", default="runs/languages")
    parser.add_argument("--base", help="a Multi30k en->de checkpoint to fine-tune")
    parser.add_argument("--finetune-minutes", type=float, default=5.0)
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir).resolve()
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "pairs": {}}
    for lang in args.pairs:
        result["pairs"][f"en-{lang}"] = pair_result(lang, runs_dir, args.overrides)
        print(json.dumps({f"en-{lang}": result["pairs"][f"en-{lang}"]}), flush=True)
    if args.base:
        result["finetune"] = finetune_result(args.base, runs_dir, args.finetune_minutes,
                                             args.overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
