"""The recipe's results table: single model, checkpoint average and ensemble over seeds.

    python bench/recipe.py --train [--no-evaluate] [--seeds 1 2 3]
                           [--experiment multi30k_en_de_cpu60] [--runs-dir runs/recipe]
                           [--average best=5] [train.py overrides, e.g. logger=csv]
    python bench/recipe.py [--evaluate] [--seeds 1 2 3] [--runs-dir runs/recipe]
                           [--average best=5] [--beam-size 5] [--splits S ...]
                           [--device cpu] [--machine NAME]

Training (``--train``): one run per seed in RUNS_DIR/seed<N>, as
``python train.py experiment=EXPERIMENT seed=N run_dir=RUNS_DIR/seed<N>
callbacks.keep_best=5`` (``keep_last=5`` with ``--average last=5``) and the overrides
(``--experiment none``: the default recipe). A run with metrics.json is complete and
skipped; one with checkpoints/last.ckpt but no metrics.json was interrupted and resumes
from it (``ckpt_path=last``), so the seeds may be trained one per session: rerun the same
command. Each session's wall time is added to RUNS_DIR/seed<N>/recipe.json.

Evaluation (alone, or after ``--train`` unless ``--no-evaluate``): for every
complete run, its best checkpoint (metrics.json) and the average of its 5 best
checkpoints by dev BLEU (``--average best=N`` or ``last=N``; nmt/inference/average.py, written
once to RUN/average-best5.ckpt and reused); then the ensemble of the singles and the ensemble of
the averages (2 runs or more). Each is scored by evaluate.py's own code
(``nmt.inference.evaluate.run``) with beam 5 on every test split of the runs' data (a catalog
corpus: its test splits with both languages; data=files: test) that can be had here; one
line names the splits that cannot be fetched (offline, no local copy), which are left
out. BLEU is sacreBLEU's on detokenized output, as evaluate.py reports it: cased, and
lowercased (``bleu_lc``, the scale of the published Multi30k results) beside it.
Hypotheses and report.json of each system: RUNS_DIR/evaluation/<system>/, reused while
newer than its checkpoints.

RUNS_DIR/results.md (also printed): BLEU and BLEU lc of each seed's single and averaged
model, their mean and sample standard deviation (ddof=1) over the seeds, and the two
ensembles, two columns per test split; then per split sacreBLEU's paired bootstrap (1000
resamples, sacrebleu's fixed seed, both metrics) of the first seed's average and the two
ensembles against the first seed's single model: p-values and 95% confidence intervals.
The last line printed is one JSON object, also written to RUNS_DIR/results.json (keys
are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# isort: off
import nmt  # noqa: E402, F401  (first: makes an installed torchvision importable for lightning)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from sacrebleu.significance import PairedTest, Result  # noqa: E402

from nmt.cli.config import check_overrides  # noqa: E402
from nmt.core.errors import CheckpointError, ConfigError, DataError, NMTError  # noqa: E402
from nmt.core.metrics import Scoring  # noqa: E402
from nmt.data.catalog import fetch_split, get_catalog_corpus  # noqa: E402
from nmt.data.corpus import read_lines  # noqa: E402
from nmt.decoding.checkpoints import LAST, atomic_torch_save, load_checkpoint  # noqa: E402
from nmt.decoding.options import Decoding  # noqa: E402
from nmt.inference.average import average_checkpoints, select_best, select_last  # noqa: E402
from nmt.training.checkpointing import Preempted  # noqa: E402
# isort: on

DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_EXPERIMENT = "multi30k_en_de_cpu60"
BOOTSTRAP_SAMPLES = 1000
# The scores of every table: BLEU as sacreBLEU gives it (cased) and lowercased, the scale
# of the published Multi30k results; JSON keys of the lowercased ones end in _lc.
METRICS = {"bleu": "BLEU", "bleu_lc": "BLEU lc"}
# Options that take one value: a key=value token after one of them is its value, any
# other key=value token is a train.py override (they may come after --seeds 1 2 3).
VALUE_OPTIONS = ("--experiment", "--runs-dir", "--average", "--beam-size", "--device",
                 "--machine")


@dataclass(frozen=True)
class Averaging:
    """Which checkpoints of a run to average: the ``n`` newest (``last``) or best."""

    mode: str
    n: int

    @classmethod
    def parse(cls, text: str) -> Averaging:
        mode, _, n = text.partition("=")
        if mode not in ("last", "best") or not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give last=N or best=N (N >= 1), e.g. last=5")
        return cls(mode, int(n))

    def __str__(self) -> str:
        return f"{self.mode}={self.n}"

    @property
    def keep_override(self) -> str:
        """The train.py override that keeps the checkpoints this averaging takes."""
        return f"callbacks.keep_{self.mode}={self.n}"

    def select(self, run_dir: Path) -> list[Path]:
        return (select_last if self.mode == "last" else select_best)(run_dir, self.n)

    def path(self, run_dir: Path) -> Path:
        return run_dir / f"average-{self.mode}{self.n}.ckpt"


# -- training ---------------------------------------------------------------------------------


def seed_dir(runs_dir: Path, seed: int) -> Path:
    return runs_dir / f"seed{seed}"


def is_complete(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def train_overrides(seed: int, run_dir: Path, experiment: str | None, averaging: Averaging,
                    overrides: Sequence[str]) -> list[str]:
    """train.py's overrides for one seed's run, resuming from its last.ckpt if it has one."""
    out = [f"experiment={experiment}"] if experiment else []
    out += [f"seed={seed}", f"run_dir={run_dir}", averaging.keep_override,
            "trainer.enable_progress_bar=false", *overrides]
    if (run_dir / "checkpoints" / LAST).is_file():
        out.append("ckpt_path=last")
    return out


def train_seeds(runs_dir: Path, seeds: Sequence[int], experiment: str | None,
                averaging: Averaging, overrides: Sequence[str]) -> None:
    """Train (or resume) the run of every seed that is not complete, one after another."""
    from nmt.training.train import train

    for seed in seeds:
        run_dir = seed_dir(runs_dir, seed)
        if is_complete(run_dir):
            print(f"seed {seed}: complete ({run_dir / 'metrics.json'}), not trained again")
            continue
        args = train_overrides(seed, run_dir, experiment, averaging, overrides)
        what = "resuming" if "ckpt_path=last" in args else "training"
        print(f"seed {seed}: {what}: python train.py {shlex.join(args)}", flush=True)
        cfg = check_overrides("train", args)
        start = time.perf_counter()
        try:
            train(cfg)
        finally:  # an interrupted session's time counts too
            if run_dir.is_dir():
                record_session(run_dir, args, (time.perf_counter() - start) / 60)


def record_session(run_dir: Path, overrides: list[str], minutes: float) -> None:
    path = run_dir / "recipe.json"
    record = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    record["sessions"].append({"overrides": overrides, "wall_minutes": round(minutes, 2),
                               "date": time.strftime("%Y-%m-%d %H:%M")})
    path.write_text(json.dumps(record, indent=1))


def train_minutes(run_dir: Path) -> float | None:
    """Training time of a run: Lightning's Timer (trainer.max_time) in its last.ckpt,
    which counts training steps across resumes; else the wall time of this script's
    sessions (training, data preparation and the final test); None if neither is known."""
    last = run_dir / "checkpoints" / LAST
    if last.is_file():
        timer = (load_checkpoint(last).get("callbacks") or {}).get("Timer")
        if timer and "train" in timer.get("time_elapsed", {}):
            return round(float(timer["time_elapsed"]["train"]) / 60, 2)
    path = run_dir / "recipe.json"
    if path.is_file():
        return round(sum(s["wall_minutes"] for s in json.loads(path.read_text())["sessions"]), 2)
    return None


# -- the systems ------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """A model to score: one checkpoint, or several (their ensemble)."""

    key: str  # its directory under evaluation/ and its name in the JSON
    label: str  # its row in the table
    checkpoints: tuple[str, ...]


def complete_runs(runs_dir: Path, seeds: Sequence[int] | None) -> dict[int, Path]:
    """Seed -> run directory of every complete run (of ``seeds``, or of every seed<N>)."""
    if seeds is None:
        found = [int(p.name[4:]) for p in runs_dir.glob("seed*") if p.name[4:].isdigit()]
        seeds = sorted(found)
    runs = {}
    for seed in seeds:
        run_dir = seed_dir(runs_dir, seed)
        if is_complete(run_dir):
            runs[seed] = run_dir
        else:
            print(f"seed {seed}: not complete (no {run_dir / 'metrics.json'}), left out")
    if not runs:
        raise ConfigError(f"{runs_dir}: no complete run (seed<N>/metrics.json); train them "
                          "first with --train")
    return runs


def single_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint as metrics.json names it (last.ckpt without validation)."""
    best = json.loads((run_dir / "metrics.json").read_text()).get("best_checkpoint") or ""
    path = Path(best) if best else run_dir / "checkpoints" / LAST
    if not path.is_file():  # the run was moved, or trained from another directory
        path = run_dir / "checkpoints" / path.name
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: its best checkpoint {best or LAST} is missing")
    return path


def averaged_checkpoint(run_dir: Path, averaging: Averaging) -> Path:
    """The average of the run's checkpoints, written once (again if the run is newer)."""
    out = averaging.path(run_dir)
    if out.is_file() and out.stat().st_mtime >= (run_dir / "metrics.json").stat().st_mtime:
        return out
    paths = averaging.select(run_dir)
    atomic_torch_save(average_checkpoints(paths), out)
    print(f"{out}: the average of {', '.join(p.name for p in paths)}")
    return out


def systems_of(runs: dict[int, Path], averaging: Averaging) -> list[System]:
    """Each seed's single and averaged model, then the two ensembles (2 runs or more)."""
    systems, singles, averages = [], [], []
    for seed, run_dir in runs.items():
        single, averaged = str(single_checkpoint(run_dir)), str(averaged_checkpoint(
            run_dir, averaging))
        singles.append(single)
        averages.append(averaged)
        systems += [System(f"seed{seed}_single", f"seed {seed} single", (single,)),
                    System(f"seed{seed}_averaged", f"seed {seed} averaged ({averaging})",
                           (averaged,))]
    if len(runs) > 1:
        n = len(runs)
        systems += [System("ensemble", f"ensemble of {n} singles", tuple(singles)),
                    System("ensemble_avg", f"ensemble of {n} averages", tuple(averages))]
    return systems


# -- test splits and scoring ------------------------------------------------------------------


def run_data(run_dir: Path) -> DictConfig:
    """The data config the run was trained with (its config.yaml)."""
    data = OmegaConf.load(run_dir / "config.yaml").data
    assert isinstance(data, DictConfig)
    return data


def test_splits(data: DictConfig, asked: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The test splits that can be had here, and those that cannot (split -> why)."""
    corpus = data.get("corpus")
    if corpus is not None:
        entry = get_catalog_corpus(corpus)
        names = list(asked or entry.tests_with(data.src_lang, data.tgt_lang))
        for name in names:  # a wrong name is an error, not a split to skip
            entry.filename(name, data.src_lang)
            entry.filename(name, data.tgt_lang)
    else:
        names = list(asked or ["test"])
    available, skipped = [], {}
    for name in names:
        try:
            if corpus is not None:
                fetch_split(corpus, name, data.src_lang, data.tgt_lang, data.root,
                            data.local_dir)
            else:
                sides = (data.get("files") or {}).get(name) or {}
                for side in ("src", "tgt"):
                    if not sides.get(side) or not Path(sides[side]).is_file():
                        raise DataError(f"data.files.{name}.{side}: no such file "
                                        f"({sides.get(side)})")
        except DataError as e:
            skipped[name] = str(e)
        else:
            available.append(name)
    if skipped:
        print(f"skipped test split(s) that cannot be fetched here: {', '.join(skipped)}")
    if not available:
        raise DataError(f"none of the test splits {', '.join(names)} can be had here: "
                        f"{next(iter(skipped.values()))}")
    return available, skipped


def evaluate_system(system: System, data: DictConfig, splits: list[str], out_dir: Path,
                    beam_size: int, device: str) -> dict[str, dict[str, Any]]:
    """Split -> evaluate.py's report entry for ``system`` (reused from out_dir if there)."""
    from nmt.inference.evaluate import run as run_evaluation

    cfg = check_overrides("evaluate", [f"decoding.beam_size={beam_size}", f"device={device}",
                                       "progress=false"])
    with open_dict(cfg):
        cfg.data = data
        cfg.checkpoint = list(system.checkpoints)
        cfg.ensemble = len(system.checkpoints) > 1
        cfg.split = list(splits)
        cfg.output_dir = str(out_dir)
    cached = cached_entries(out_dir / "report.json", system, splits, cfg)
    if cached is not None:
        print(f"{system.label}: scores of {out_dir / 'report.json'}")
        return cached
    print(f"{system.label}: python evaluate.py checkpoint=[{','.join(system.checkpoints)}]"
          f"{' ensemble=true' if cfg.ensemble else ''} decoding.beam_size={beam_size}",
          flush=True)
    entries = run_evaluation(cfg)
    return {e["test_set"]: e for e in entries}


def cached_entries(report: Path, system: System, splits: list[str], cfg: DictConfig
                   ) -> dict[str, dict[str, Any]] | None:
    """The report's entries of ``splits`` if it scored these checkpoints with these
    decoding settings after they were written, else None."""
    if not report.is_file() or report.stat().st_mtime < max(
            Path(c).stat().st_mtime for c in system.checkpoints):
        return None
    decoding = json.loads(json.dumps(dataclasses.asdict(Decoding.from_dict(dict(cfg.decoding)))))
    entries = {e["test_set"]: e for e in json.loads(report.read_text())
               if e["checkpoint"] == "+".join(system.checkpoints) and e["decoding"] == decoding}
    if not all(s in entries and Path(entries[s]["hypotheses"]).is_file() for s in splits):
        return None
    return {s: entries[s] for s in splits}


def lines(path: str) -> list[str]:
    return list(read_lines(path, allow_empty=True))


def paired_bootstrap(baseline: list[str], systems: dict[str, list[str]], references: list[str],
                     tgt_lang: str) -> dict[str, dict[str, dict[str, float | None]]]:
    """sacreBLEU's paired bootstrap of ``systems`` against ``baseline``, on cased and
    lowercased BLEU (the same resamples): metric ("bleu", "bleu_lc") -> name -> BLEU,
    the bootstrap mean, its 95% confidence interval (half-width) and p-value (the
    baseline's is None), under "baseline" and each system's name. sacrebleu's fixed
    seed draws the same resamples for both metrics."""
    named: list[tuple[str, Sequence[str]]] = [("baseline", baseline), *systems.items()]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for key in METRICS:  # one test each: sacrebleu keys its results by the metric's name
        _, scores = PairedTest(named, {key: Scoring(tgt_lang).metric(key)}, [references],
                               test_type="bs", n_samples=BOOTSTRAP_SAMPLES)()
        results = next(v for k, v in scores.items() if k != "System")
        out[key] = {}
        for name, r in zip(scores["System"], results, strict=True):
            assert isinstance(name, str) and isinstance(r, Result)
            assert r.mean is not None and r.ci is not None  # bootstrap: both are set
            p = None if r.p_value is None else round(float(r.p_value), 4)
            if name != "baseline" and list(systems[name]) == list(baseline):
                p = 1.0  # sacrebleu counts differences strictly larger: 1 / (n + 1) here
            out[key][name] = {"bleu": round(r.score, 4), "mean": round(float(r.mean), 4),
                              "ci": round(float(r.ci), 4), "p": p}
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for one value)."""
    a = np.asarray(values, dtype=float)
    return round(float(a.mean()), 4), round(float(a.std(ddof=1)), 4) if a.size > 1 else None


# -- the table --------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*out, *("| " + " | ".join(r) + " |" for r in rows)])


def suffix(metric: str) -> str:
    """What the JSON keys of ``metric`` end in: nothing for BLEU, _lc for lowercased."""
    return "" if metric == "bleu" else "_" + metric.removeprefix("bleu_")


def results_markdown(result: dict[str, Any], systems: list[System],
                     scores: dict[str, dict[str, dict[str, float]]], bootstrap: dict[str, Any],
                     skipped: dict[str, str], command: str) -> str:
    splits, seeds = result["splits"], result["seeds"]
    columns = [(split, metric) for split in splits for metric in METRICS]

    def row(label: str, key: str) -> list[str]:
        return [label, *(fmt(scores[m][key][split]) for split, m in columns)]

    rows = [row(s.label, s.key) for s in systems if s.key.startswith("seed")]
    for kind in ("single", "averaged"):
        rows.append([f"{kind} mean ± std", *(
            f"{fmt(result[f'{kind}_mean{suffix(m)}'][split])} ± "
            f"{fmt(result[f'{kind}_std{suffix(m)}'][split])}" for split, m in columns)])
    rows += [row(s.label, s.key) for s in systems if not s.key.startswith("seed")]
    header = ["model", *(f"{split} {METRICS[m]}" for split, m in columns)]
    parts = [
        f"# Recipe: single, averaged, ensemble ({result['date']})",
        f"Machine: {result['machine']}. Seeds {', '.join(map(str, seeds))}; training minutes "
        f"{', '.join(fmt(m) for m in result['train_minutes'])}. Averaged: nmt/inference/average.py "
        f"{result['average']}. Beam {result['beam_size']}. Command: `{command}`",
        f"BLEU: sacreBLEU on detokenized output ({result['bleu_signature']}); BLEU lc: the "
        "same lowercased (case:lc), the scale of the published Multi30k results. std is the "
        "sample standard deviation over the seeds (ddof=1).",
        markdown_table(header, rows)]
    if skipped:
        parts.append("Skipped test splits (cannot be fetched here): " + "; ".join(
            f"{name}: {why}" for name, why in skipped.items()))
    labels = {s.key: s.label for s in systems}
    first = f"seed{seeds[0]}"
    names: dict[str, str] = {
        "baseline": labels[f"{first}_single"], "averaged": labels[f"{first}_averaged"],
        **{k: labels[k] for k in ("ensemble", "ensemble_avg") if k in labels}}
    parts.append(f"Paired bootstrap ({BOOTSTRAP_SAMPLES} resamples, sacrebleu.significance."
                 f"PairedTest, test_type=bs) against the {names['baseline']} model. {P_VALUE}")
    for split in splits:
        parts.append(f"{split}:\n\n" + bootstrap_table(bootstrap[split], names))
    return "\n\n".join(parts) + "\n"


P_VALUE = ("p: the probability, were the two equally good, of a BLEU difference (either way) "
           "larger than the one observed; (count + 1) / (resamples + 1), so 0.001 is the "
           "smallest, and 1 for identical outputs. 95% CI: the mean BLEU over the "
           "resamples ± half the width of their 2.5-97.5 percentile interval.")


def bootstrap_table(bootstrap: dict[str, dict[str, dict[str, Any]]], names: dict[str, str]
                    ) -> str:
    """One split's paired bootstrap (metric -> system -> result): a row per system, BLEU,
    CI and p-value of each metric."""
    header = ["system"]
    for label in METRICS.values():
        header += [label, "bootstrap mean ± 95% CI", "p-value"]
    rows = []
    for name in bootstrap["bleu"]:
        cells = [names[name]]
        for metric in METRICS:
            r = bootstrap[metric][name]
            cells += [fmt(r["bleu"]), f"{fmt(r['mean'])} ± {fmt(r['ci'])}",
                      "(baseline)" if r["p"] is None else f"{r['p']:.4f}"]
        rows.append(cells)
    return markdown_table(header, rows)


def machine_description(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text = f"{torch.cuda.get_device_name()}, {text}"
    return text


def evaluate_runs(args: argparse.Namespace, command: str) -> dict[str, Any]:
    runs_dir = Path(args.runs_dir)
    runs = complete_runs(runs_dir, args.seeds)
    seeds = list(runs)
    data = run_data(runs[seeds[0]])
    splits, skipped = test_splits(data, args.splits)
    systems = systems_of(runs, args.average)
    entries = {s.key: evaluate_system(s, data, splits, runs_dir / "evaluation" / s.key,
                                      args.beam_size, args.device) for s in systems}
    scores = {m: {key: {split: float(e[split][m]) for split in splits}
                  for key, e in entries.items()} for m in METRICS}
    bootstrap = bootstrap_splits(entries, splits, f"seed{seeds[0]}", data.tgt_lang)
    result: dict[str, Any] = {"seeds": seeds, "splits": splits,
                              "skipped_splits": list(skipped), "average": str(args.average),
                              "beam_size": args.beam_size}
    for metric in METRICS:
        result.update(seed_statistics(scores[metric], seeds, splits, suffix(metric)))
        result[f"paired_bootstrap_p{suffix(metric)}"] = {
            split: {k: r["p"] for k, r in b[metric].items() if k != "baseline"}
            for split, b in bootstrap.items()}
        result[f"paired_bootstrap_ci{suffix(metric)}"] = {
            split: {k: [r["mean"], r["ci"]] for k, r in b[metric].items()}
            for split, b in bootstrap.items()}
    result.update(
        std="sample standard deviation over seeds (ddof=1); null for one seed",
        bootstrap_samples=BOOTSTRAP_SAMPLES,
        bleu_signature=entries[f"seed{seeds[0]}_single"][splits[0]]["bleu_signature"],
        train_minutes=[train_minutes(runs[s]) for s in seeds],
        machine=args.machine or machine_description(args.device),
        date=time.strftime("%Y-%m-%d"), results=str(runs_dir / "results.md"))
    markdown = results_markdown(result, systems, scores, bootstrap, skipped, command)
    (runs_dir / "results.md").write_text(markdown)
    (runs_dir / "results.json").write_text(json.dumps(result, indent=1))
    print(markdown)
    return result


def bootstrap_splits(entries: dict[str, dict[str, dict[str, Any]]], splits: list[str],
                     first: str, tgt_lang: str) -> dict[str, Any]:
    """Split -> the paired bootstrap of the first seed's average and the ensembles
    against the first seed's single model (``paired_bootstrap``'s result)."""
    compared = {"averaged": f"{first}_averaged", "ensemble": "ensemble",
                "ensemble_avg": "ensemble_avg"}
    bootstrap = {}
    for split in splits:
        baseline = entries[f"{first}_single"][split]
        hyps = {name: lines(entries[key][split]["hypotheses"])
                for name, key in compared.items() if key in entries}
        bootstrap[split] = paired_bootstrap(lines(baseline["hypotheses"]), hyps,
                                            lines(baseline["reference"]), tgt_lang)
    return bootstrap


def seed_statistics(scores: dict[str, dict[str, float]], seeds: list[int], splits: list[str],
                    end: str) -> dict[str, Any]:
    """One metric's JSON entries (keys ending in ``end``): each seed's single and averaged
    score per split, their mean and standard deviation, and the two ensembles' (None
    with one seed)."""
    result: dict[str, Any] = {}
    for kind in ("single", "averaged"):
        per_seed = {split: [scores[f"seed{s}_{kind}"][split] for s in seeds] for split in splits}
        stats = {split: mean_std(values) for split, values in per_seed.items()}
        result[f"{kind}_bleu{end}"] = per_seed
        result[f"{kind}_mean{end}"] = {split: m for split, (m, _) in stats.items()}
        result[f"{kind}_std{end}"] = {split: s for split, (_, s) in stats.items()}
    for key, name in (("ensemble", "ensemble_bleu"), ("ensemble_avg", "ensemble_avg_bleu")):
        result[name + end] = {split: scores[key][split] if key in scores else None
                              for split in splits}
    return result


# -- the command ------------------------------------------------------------------------------


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(options, train.py overrides): a key=value token is an override unless it is the
    value of an option in VALUE_OPTIONS, so overrides may follow ``--seeds 1 2 3``."""
    options: list[str] = []
    overrides: list[str] = []
    for token in argv:
        if "=" in token and not token.startswith("-") and (
                not options or options[-1] not in VALUE_OPTIONS):
            overrides.append(token)
        else:
            options.append(token)
    return options, overrides


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     usage="%(prog)s [options] [train.py overrides]")
    parser.add_argument("--train", action="store_true",
                        help="train the runs that are not complete, then evaluate")
    parser.add_argument("--evaluate", action="store_true",
                        help="score the complete runs (the default; without --train: "
                        "only that)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="with --train: train only")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training: default 1 2 3; evaluation: default every complete "
                        "seed<N> of --runs-dir")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help="conf/experiment/ recipe to train ('none': the default recipe)")
    parser.add_argument("--runs-dir", default="runs/recipe")
    parser.add_argument("--average", type=Averaging.parse, default=Averaging("best", 5),
                        help="the checkpoints each run averages: last=N or best=N")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--splits", nargs="+", default=None,
                        help="test splits (default: every test split of the runs' data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--machine", default=None,
                        help="the machine's name in the results (default: described)")
    options, overrides = split_overrides(argv)
    args = parser.parse_args(options)
    if overrides and not args.train:
        parser.error(f"train.py overrides ({' '.join(overrides)}) go with --train")
    if args.evaluate and args.no_evaluate:
        parser.error("--evaluate and --no-evaluate exclude each other")
    if args.beam_size < 1:
        parser.error("--beam-size must be at least 1")
    return args, overrides


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = parse_args(argv)
    command = shlex.join(["python", "bench/recipe.py", *argv])
    try:
        if args.train:
            experiment = None if args.experiment in ("", "none") else args.experiment
            train_seeds(Path(args.runs_dir), args.seeds or DEFAULT_SEEDS, experiment,
                        args.average, overrides)
        if not args.no_evaluate:
            result = evaluate_runs(args, command)
            print(json.dumps(result))
            return result
    except Preempted as e:
        print(f"{e}\nresume: run the same command again", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NMTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return None


if __name__ == "__main__":
    main()
