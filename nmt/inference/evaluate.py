"""evaluate.py: translate test sets with checkpoints and score them with sacrebleu.

For every (checkpoint, test set) pair: the hypotheses file, and an entry in
``report.json`` with BLEU, chrF and TER (and lowercased BLEU), their sacrebleu
signatures, the decoding settings, the checkpoint, wall time and sentences/s.
All pairs are printed as one comparison table, a row each. ``split=all_tests``
means every test split of the catalog corpus that has both languages.
With ``ensemble=true`` the checkpoints are one model, their ensemble
(nmt/decoding/ensemble.py), named "a.ckpt+b.ckpt+..." in the report.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

from nmt.core.errors import ConfigError, DataError
from nmt.core.languages import primary
from nmt.core.metrics import Scoring
from nmt.data.corpus import read_lines
from nmt.data.test_sets import resolve_test_sets
from nmt.decoding.options import Decoding
from nmt.inference.options import as_list, resolve_device, resolve_workers, share_threads
from nmt.inference.translate import translate_file
from nmt.inference.translator import Translator


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def run(cfg: Any) -> list[dict[str, Any]]:
    checkpoints = as_list(cfg.checkpoint)
    if not checkpoints:
        raise ConfigError("checkpoint is not set")
    decoding = Decoding.from_dict(dict(cfg.decoding))
    if "format" in cfg.data and not (cfg.src or cfg.ref):  # captioning data: data=shapes, ...
        if cfg.get("ensemble", False):
            raise ConfigError("ensemble=true: ensembles translate; captioning models are "
                              "evaluated one by one")
        return _evaluate_captions(cfg, checkpoints, decoding)
    sets = resolve_test_sets(cfg)
    device = resolve_device(cfg.device)
    workers = resolve_workers(cfg.workers, device, decoding.sampling)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    share_threads(workers)
    # Each model is one checkpoint, or (ensemble=true) the ensemble of all of them.
    models = [checkpoints] if cfg.get("ensemble", False) else [[c] for c in checkpoints]
    for members in models:
        translator = Translator.from_checkpoint(members, device, cfg.max_src_len, workers)
        scoring = scoring_for(cfg, translator)
        scoring.signatures()  # a missing extra fails now, not after translating
        ckpt = "+".join(members)
        stem = "+".join(Path(m).stem for m in members)
        for name, files in sets.items():
            refs = list(read_lines(files.tgt, allow_empty=True))
            hyp_path = out_dir / f"{safe_name(stem)}.{safe_name(name)}.hyp"
            start = time.perf_counter()
            n = translate_file(translator, str(files.src), str(hyp_path), decoding,
                               cfg.batch_tokens, cfg.chunk_size, cfg.progress)
            wall = time.perf_counter() - start
            if n != len(refs):
                raise DataError(f"{files.src} has {n} lines but {files.tgt} has {len(refs)}")
            hyps = list(read_lines(hyp_path, allow_empty=True)) if n else []
            entry = {"checkpoint": str(ckpt), "test_set": name, "source": str(files.src),
                     "reference": str(files.tgt), "hypotheses": str(hyp_path),
                     "sentences": n, **scoring.scores(hyps, refs),
                     "decoding": dataclasses.asdict(decoding),
                     "wall_s": round(wall, 3), "sentences_per_s": round(n / wall, 2)}
            report.append(entry)
            print(json.dumps({k: entry[k] for k in ("checkpoint", "test_set", "bleu", "chrf",
                                                    "ter")}))
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    print(comparison_table(report))
    for key in ("bleu_signature", "chrf_signature", "ter_signature"):
        print(f"{key.split('_')[0].upper()}: {report[0][key]}")
    return report


def scoring_for(cfg: Any, translator: Translator) -> Scoring:
    """Scores into the checkpoint's target language (data.tgt_lang for a checkpoint that
    records none); a test split of data in another target language is refused."""
    recorded = (translator.languages or {}).get("tgt")
    if recorded and not (cfg.src or cfg.ref) and primary(recorded) != primary(
            cfg.data.tgt_lang):
        raise ConfigError(f"{translator.origin} translates into {recorded}, but "
                          f"data.tgt_lang={cfg.data.tgt_lang}: choose the data it was "
                          f"trained for (data=...)")
    tgt = recorded if recorded and (cfg.src or cfg.ref) else cfg.data.tgt_lang
    return Scoring(tgt, cfg.metrics.get("bleu_tokenize") if "metrics" in cfg else None)


def _evaluate_captions(cfg: Any, checkpoints: list[str], decoding: Decoding
                       ) -> list[dict[str, Any]]:
    from nmt.inference.caption import evaluate_captions

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = evaluate_captions(cfg, checkpoints, decoding, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    print(comparison_table(report))
    print("captions: lowercased, punctuation dropped (nmt.core.metrics.caption_tokens); BLEU by "
          "sacrebleu against every reference; CIDEr-D and ROUGE-L by pycocoevalcap; x100")
    return report


TRANSLATION_COLUMNS = {"BLEU": "bleu", "chrF": "chrf", "TER": "ter", "BLEU lc": "bleu_lc"}
CAPTION_COLUMNS = {"BLEU-1": "bleu1", "BLEU-4": "bleu4", "ROUGE-L": "rouge_l",
                   "CIDEr-D": "cider"}


def comparison_table(report: list[dict[str, Any]]) -> str:
    columns = CAPTION_COLUMNS if report and "bleu4" in report[0] else TRANSLATION_COLUMNS
    rows = [("checkpoint", "test set", *columns, "sent/s")]
    rows += [("+".join(Path(c).name for c in e["checkpoint"].split("+")), e["test_set"],
              *(f"{e[k]:.2f}" if k in e else "-" for k in columns.values()),
              f"{e['sentences_per_s']:.1f}") for e in report]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
