"""Levers against a baseline: one table of test BLEU (cased and lowercased) per lever and
seed, with sacreBLEU's paired bootstrap of each lever against the baseline.

    python bench/levers.py BASELINE_DIR NAME=DIR [NAME=DIR ...] [--seeds 1 2]
                           [--beam-size 5] [--splits S ...] [--device cpu] [--machine NAME]
                           [--output runs/levers]

Every directory holds one run per seed, seed<N>/, as ``bench/recipe.py --train`` writes
them (``--runs-dir DIR``, the lever as train.py overrides), e.g.

    python bench/recipe.py --train --no-evaluate --seeds 1 2 --runs-dir runs/levers/base
    python bench/recipe.py --train --no-evaluate --seeds 1 2 --runs-dir runs/levers/wd \\
        model.word_dropout=0.1
    python bench/levers.py runs/levers/base "word dropout 0.1=runs/levers/wd"

A lever is compared at equal budget only if its runs had the baseline's (the same
trainer.max_time on an idle machine, or the same trainer.max_steps and schedule when
runs share the cores): the table gives each run's steps and training minutes so that
this can be checked. Each seed's best checkpoint (metrics.json) is scored by evaluate.py's
code with beam 5 on every test split that can be had here (recipe.py's scoring,
reused from DIR/evaluation/). The bootstrap compares the lever's seed N with the
baseline's seed N, and, for the lever as a whole, the seeds' outputs concatenated
(seed 1's test set, then seed 2's, ...) against the baseline's concatenated the same
way: one p-value over every seed. The seeds are those the baseline and every lever
have complete (``--seeds`` to choose). OUTPUT/levers.md (also printed) and
OUTPUT/levers.json; the last line printed is that JSON (its keys are compared from run
to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import recipe  # noqa: E402  (sets up the repository's imports)

from nmt.core.errors import ConfigError, NMTError  # noqa: E402


def parse_lever(text: str) -> tuple[str, Path]:
    name, sep, path = text.rpartition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=DIR, e.g. 'word dropout=runs/wd'")
    return name, Path(path)


def common_seeds(dirs: Sequence[Path], asked: Sequence[int] | None) -> list[int]:
    """The seeds every directory has a complete run of (of ``asked``, if given)."""
    have = [{int(p.name[4:]) for p in d.glob("seed*")
             if p.name[4:].isdigit() and recipe.is_complete(p)} for d in dirs]
    seeds = sorted(set.intersection(*have) & set(asked) if asked else set.intersection(*have))
    if not seeds:
        detail = "; ".join(f"{d}: {sorted(h) or 'none'}" for d, h in zip(dirs, have, strict=True))
        raise ConfigError(f"no seed has a complete run (seed<N>/metrics.json) in every "
                          f"directory ({detail})")
    return seeds


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What a run's budget was: its steps, training minutes, and its best dev BLEU."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    last = run_dir / "checkpoints" / recipe.LAST
    steps = recipe.load_checkpoint(last).get("global_step") if last.is_file() else None
    return {"steps": steps, "minutes": recipe.train_minutes(run_dir),
            "dev_bleu": metrics.get("val/bleu")}


def score_runs(directory: Path, seeds: list[int], splits: list[str], data: Any,
               args: argparse.Namespace) -> dict[int, dict[str, dict[str, Any]]]:
    """Seed -> split -> evaluate.py's report entry of the seed's best checkpoint."""
    out = {}
    for seed in seeds:
        run_dir = recipe.seed_dir(directory, seed)
        checkpoint = str(recipe.single_checkpoint(run_dir))
        system = recipe.System(f"seed{seed}_single", f"{directory} seed {seed}", (checkpoint,))
        out[seed] = recipe.evaluate_system(system, data, splits,
                                           directory / "evaluation" / system.key,
                                           args.beam_size, args.device)
    return out


def concatenated(entries: dict[int, dict[str, dict[str, Any]]], split: str, field: str
                 ) -> list[str]:
    return [line for seed in sorted(entries)
            for line in recipe.lines(entries[seed][split][field])]


def compare(base: dict[int, Any], lever: dict[int, Any], splits: list[str], tgt_lang: str
            ) -> dict[str, Any]:
    """A lever's scores and bootstrap against the baseline: metric -> split -> numbers."""
    out: dict[str, Any] = {}
    for split in splits:
        refs = concatenated(base, split, "reference")
        pooled = recipe.paired_bootstrap(concatenated(base, split, "hypotheses"),
                                         {"lever": concatenated(lever, split, "hypotheses")},
                                         refs, tgt_lang)
        per_seed = {seed: recipe.paired_bootstrap(
            recipe.lines(base[seed][split]["hypotheses"]),
            {"lever": recipe.lines(lever[seed][split]["hypotheses"])},
            recipe.lines(base[seed][split]["reference"]), tgt_lang) for seed in sorted(lever)}
        for metric in recipe.METRICS:
            values = [float(lever[s][split][metric]) for s in sorted(lever)]
            baseline = [float(base[s][split][metric]) for s in sorted(base)]
            mean, std = recipe.mean_std(values)
            out.setdefault(metric, {})[split] = {
                "per_seed": values, "mean": mean, "std": std,
                "delta": round(mean - recipe.mean_std(baseline)[0], 4),
                "p_per_seed": [per_seed[s][metric]["lever"]["p"] for s in sorted(lever)],
                "p": pooled[metric]["lever"]["p"]}
    return out


def baseline_scores(base: dict[int, Any], splits: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in recipe.METRICS:
        for split in splits:
            values = [float(base[s][split][metric]) for s in sorted(base)]
            mean, std = recipe.mean_std(values)
            out.setdefault(metric, {})[split] = {"per_seed": values, "mean": mean, "std": std}
    return out


def table(result: dict[str, Any]) -> str:
    """One row per system (baseline first), per split: BLEU and BLEU lc per seed, the
    mean, the change against the baseline and the pooled p-value."""
    fmt = recipe.fmt
    rows = []
    for name, entry in [("baseline", result["baseline"]), *result["levers"].items()]:
        facts = entry["runs"]
        budget = ", ".join(f"{f['steps']} steps / {fmt(f['minutes'])} min" for f in facts)
        for split in result["splits"]:
            cells = [name, split]
            for metric in recipe.METRICS:
                s = entry["scores"][metric][split]
                seeds = " / ".join(fmt(v) for v in s["per_seed"])
                change = "" if "delta" not in s else f" ({s['delta']:+.2f})"
                cells.append(f"{seeds}; {fmt(s['mean'])}{change}")
                cells.append("-" if "p" not in s else f"{s['p']:.4f} (" + ", ".join(
                    f"{p:.3f}" for p in s["p_per_seed"]) + ")")
            rows.append([*cells, budget])
    header = ["system", "split"]
    for label in recipe.METRICS.values():
        header += [f"{label}: per seed; mean (change)", f"p {label} pooled (per seed)"]
    return recipe.markdown_table([*header, "runs (per seed)"], rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("baseline", type=Path, help="the baseline's runs directory")
    parser.add_argument("levers", type=parse_lever, nargs="+", help="NAME=DIR, one per lever")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--splits", nargs="+", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--machine", default=None)
    parser.add_argument("--output", type=Path, default=Path("runs/levers"))
    args = parser.parse_args(argv)
    try:
        return run(args, " ".join(["python", "bench/levers.py", *(argv or sys.argv[1:])]))
    except NMTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    dirs = [args.baseline, *(d for _, d in args.levers)]
    seeds = common_seeds(dirs, args.seeds)
    data = recipe.run_data(recipe.seed_dir(args.baseline, seeds[0]))
    splits, skipped = recipe.test_splits(data, args.splits)
    base = score_runs(args.baseline, seeds, splits, data, args)
    result: dict[str, Any] = {
        "seeds": seeds, "splits": splits, "skipped_splits": list(skipped),
        "beam_size": args.beam_size, "bootstrap_samples": recipe.BOOTSTRAP_SAMPLES,
        "baseline": {"dir": str(args.baseline), "scores": baseline_scores(base, splits),
                     "runs": [run_facts(recipe.seed_dir(args.baseline, s)) for s in seeds]},
        "levers": {}}
    for name, directory in args.levers:
        lever = score_runs(directory, seeds, splits, data, args)
        result["levers"][name] = {
            "dir": str(directory), "scores": compare(base, lever, splits, data.tgt_lang),
            "runs": [run_facts(recipe.seed_dir(directory, s)) for s in seeds]}
    result.update(machine=args.machine or recipe.machine_description(args.device),
                  date=time.strftime("%Y-%m-%d"))
    markdown = "\n\n".join([
        f"# Levers against {args.baseline} ({result['date']})",
        f"Machine: {result['machine']}. Seeds {', '.join(map(str, seeds))}; beam "
        f"{args.beam_size}; each seed's best checkpoint. Command: `{command}`",
        "BLEU: sacreBLEU, cased; BLEU lc: lowercased. Change: the lever's mean minus the "
        f"baseline's. p: paired bootstrap ({recipe.BOOTSTRAP_SAMPLES} resamples) of the "
        "seeds' outputs concatenated against the baseline's; in brackets, seed by seed. "
        + recipe.P_VALUE, table(result)]) + "\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "levers.md").write_text(markdown)
    (args.output / "levers.json").write_text(json.dumps(result, indent=1))
    print(markdown)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
