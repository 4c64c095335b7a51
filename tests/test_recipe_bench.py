"""bench/recipe.py on three tiny runs of the toy corpus (data=files, its test split): one
run per seed (complete ones skipped, interrupted ones resumed), each run's average, the
ensembles, the table, the paired bootstrap and the JSON."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import files_config
from train_helpers import load_bench, toy_overrides

from nmt.core.errors import ConfigError, DataError

recipe = load_bench("recipe")

SEEDS = ["1", "2", "3"]
KEYS = {"seeds", "splits", "skipped_splits", "average", "beam_size", "single_bleu",
        "single_mean", "single_std", "averaged_bleu", "averaged_mean", "averaged_std",
        "ensemble_bleu", "ensemble_avg_bleu", "paired_bootstrap_p", "paired_bootstrap_ci",
        "std", "bootstrap_samples", "bleu_signature", "train_minutes", "machine", "date",
        "results", "single_bleu_lc", "single_mean_lc", "single_std_lc", "averaged_bleu_lc",
        "averaged_mean_lc", "averaged_std_lc", "ensemble_bleu_lc", "ensemble_avg_bleu_lc",
        "paired_bootstrap_p_lc", "paired_bootstrap_ci_lc"}


@pytest.fixture(scope="module")
def trained(toy_dir, tmp_path_factory, one_thread) -> tuple[Path, list[str]]:
    """Three seeds of the 60-minute experiment cut down to the toy corpus: 5 short epochs,
    keeping the 3 newest checkpoints; the runs directory and the training command."""
    tmp = tmp_path_factory.mktemp("recipe")
    toy = [o for o in toy_overrides(files_config(toy_dir, tmp / "cache"), tmp)
           if not o.startswith("run_dir=")]
    args = ["--train", "--no-evaluate", "--seeds", *SEEDS, "--runs-dir", str(tmp / "runs"),
            "--average", "last=3", *toy, "trainer.max_epochs=5", "optim.lr=0.02", "logger=csv",
            "callbacks.every_n_minutes=null"]
    assert recipe.main(args) is None
    return tmp / "runs", args


@pytest.fixture(scope="module")
def evaluated(trained) -> tuple[Path, dict]:
    runs_dir, _ = trained
    result = recipe.main(["--runs-dir", str(runs_dir), "--average", "last=3",
                          "--beam-size", "3", "--machine", "toy"])
    return runs_dir, result


def test_training_keeps_what_averaging_takes(trained):
    runs_dir, _ = trained
    for seed in SEEDS:
        run = runs_dir / f"seed{seed}"
        assert (run / "metrics.json").is_file()
        assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) == 3
        config = (run / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "keep_last: 3\n" in config
        assert "input_feeding: true" in config  # the experiment, under the toy overrides
        assert "_target_: nmt.training.schedules.TimedCosine" in config


def test_table_rows(evaluated):
    runs_dir, _ = evaluated
    text = (runs_dir / "results.md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()
            if line.startswith("| ")]
    assert rows[:11] == ["model", "seed 1 single", "seed 1 averaged (last=3)",
                         "seed 2 single", "seed 2 averaged (last=3)", "seed 3 single",
                         "seed 3 averaged (last=3)", "single mean ± std",
                         "averaged mean ± std", "ensemble of 3 singles",
                         "ensemble of 3 averages"]
    assert "| model | test BLEU | test BLEU lc |" in text and "ddof=1" in text
    # The bootstrap table of the split: baseline, then the averaged model and the ensembles.
    assert rows[11:] == ["system", "seed 1 single", "seed 1 averaged (last=3)",
                         "ensemble of 3 singles", "ensemble of 3 averages"]


def finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_json_keys_numbers_and_spread(evaluated):
    runs_dir, result = evaluated
    assert set(result) == KEYS
    assert result["seeds"] == [1, 2, 3] and result["splits"] == ["test"]
    assert result["skipped_splits"] == [] and result["machine"] == "toy"
    assert json.loads((runs_dir / "results.json").read_text()) == result
    for end in ("", "_lc"):  # cased BLEU, then lowercased
        for kind in ("single", "averaged"):
            values = result[f"{kind}_bleu{end}"]["test"]
            assert len(values) == 3 and all(finite(v) for v in values)
            assert len(set(values)) > 1  # the seeds' models differ
            assert result[f"{kind}_mean{end}"]["test"] == pytest.approx(np.mean(values),
                                                                        abs=1e-4)
            assert result[f"{kind}_std{end}"]["test"] == pytest.approx(
                np.std(values, ddof=1), abs=1e-4)
        assert result[f"ensemble_bleu{end}"]["test"] > 0
        assert finite(result[f"ensemble_avg_bleu{end}"]["test"])
        p = result[f"paired_bootstrap_p{end}"]["test"]
        assert set(p) == {"averaged", "ensemble", "ensemble_avg"}
        assert all(finite(v) and 0 <= v <= 1 for v in p.values())
        ci = result[f"paired_bootstrap_ci{end}"]["test"]
        assert set(ci) == {"baseline", *p}
        assert all(finite(m) and finite(c) and c >= 0 for m, c in ci.values())

    # Training time from Lightning's Timer (the experiment's trainer.max_time).
    assert all(finite(m) and 0 < m < 10 for m in result["train_minutes"])


def test_scores_are_evaluate_py_reports(evaluated):
    runs_dir, result = evaluated
    singles = []
    for seed, bleu in zip(SEEDS, result["single_bleu"]["test"], strict=True):
        best = json.loads((runs_dir / f"seed{seed}" / "metrics.json").read_text())
        [entry] = json.loads((runs_dir / "evaluation" / f"seed{seed}_single" /
                              "report.json").read_text())
        assert entry["checkpoint"] == best["best_checkpoint"] and entry["bleu"] == bleu
        assert entry["bleu_lc"] == result["single_bleu_lc"]["test"][int(seed) - 1]
        assert entry["decoding"]["beam_size"] == 3
        singles.append(entry["checkpoint"])
    [ensemble] = json.loads((runs_dir / "evaluation" / "ensemble" / "report.json").read_text())
    assert ensemble["checkpoint"] == "+".join(singles)
    assert ensemble["bleu"] == result["ensemble_bleu"]["test"]
    # The bootstrap scores the same hypotheses: its resamples' mean is near the table's BLEU.
    for end in ("", "_lc"):
        mean, ci = result[f"paired_bootstrap_ci{end}"]["test"]["baseline"]
        assert abs(mean - result[f"single_bleu{end}"]["test"][0]) < ci


def test_averages_of_the_last_checkpoints_written_once(evaluated, capsys):
    runs_dir, result = evaluated
    averages = [runs_dir / f"seed{s}" / "average-last3.ckpt" for s in SEEDS]
    for path in averages:
        sources = torch.load(path, weights_only=True)["averaged_from"]
        assert sorted(Path(p).name for p in sources) == sorted(
            p.name for p in (path.parent / "checkpoints").glob("epoch*.ckpt"))
    written = [p.stat().st_mtime for p in averages]
    # A second evaluation reuses the averages and the reports, and prints the same JSON.
    again = recipe.main(["--runs-dir", str(runs_dir), "--average", "last=3",
                         "--beam-size", "3", "--machine", "toy"])
    out = capsys.readouterr().out
    assert [p.stat().st_mtime for p in averages] == written
    assert out.count(": scores of ") == 8 and "python evaluate.py" not in out
    assert json.loads(out.strip().splitlines()[-1]) == again
    assert {k: v for k, v in again.items() if k != "train_minutes"} == {
        k: v for k, v in result.items() if k != "train_minutes"}


def test_complete_runs_are_skipped_and_interrupted_ones_resume(trained, tmp_path, capsys):
    runs_dir, args = trained
    recipe.main(args)
    assert capsys.readouterr().out.count("not trained again") == 3
    # A run without metrics.json but with last.ckpt resumes from it (here: its last epoch
    # is done, so it only writes metrics.json again); then, without --no-evaluate, the
    # table of that one run.
    shutil.copytree(runs_dir / "seed3", tmp_path / "seed3")
    (tmp_path / "seed3" / "metrics.json").unlink()
    resumed = [a if a != str(runs_dir) else str(tmp_path) for a in args
               if a != "--no-evaluate"]
    resumed[resumed.index("--seeds") + 1:resumed.index("--seeds") + 4] = ["3"]
    result = recipe.main(resumed)
    assert "seed 3: resuming: python train.py" in capsys.readouterr().out
    assert result is not None and result["seeds"] == [3]
    assert (tmp_path / "seed3" / "metrics.json").is_file()
    sessions = json.loads((tmp_path / "seed3" / "recipe.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["overrides"][-1] == "ckpt_path=last"


def test_one_seed_has_no_spread_and_no_ensemble(trained, tmp_path):
    runs_dir, _ = trained
    shutil.copytree(runs_dir / "seed2", tmp_path / "seed2")
    result = recipe.main(["--runs-dir", str(tmp_path), "--average", "last=3",
                          "--beam-size", "3"])
    assert result["seeds"] == [2] and result["single_std"] == {"test": None}
    assert result["ensemble_bleu"] == {"test": None} == result["ensemble_avg_bleu"]
    assert list(result["paired_bootstrap_p"]["test"]) == ["averaged"]
    text = (tmp_path / "results.md").read_text()
    assert (f"| single mean ± std | {result['single_bleu']['test'][0]:.2f} ± - | "
            f"{result['single_bleu_lc']['test'][0]:.2f} ± - |") in text
    assert "ensemble of" not in text


def test_train_overrides(tmp_path):
    average = recipe.Averaging.parse("best=4")
    args = recipe.train_overrides(2, tmp_path / "seed2", "multi30k_en_de_cpu60", average,
                                  ["logger=csv"])
    assert args == ["experiment=multi30k_en_de_cpu60", "seed=2",
                    f"run_dir={tmp_path / 'seed2'}", "callbacks.keep_best=4",
                    "trainer.enable_progress_bar=false", "logger=csv"]
    (tmp_path / "seed2" / "checkpoints").mkdir(parents=True)
    (tmp_path / "seed2" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert recipe.train_overrides(2, tmp_path / "seed2", None, average, [])[-1] == (
        "ckpt_path=last")


def test_command_line_options_and_overrides():
    args, overrides = recipe.parse_args(["--train", "--seeds", "1", "2", "model=gru",
                                         "--average", "best=3", "trainer.max_time=00:00:10:00"])
    assert args.seeds == [1, 2] and str(args.average) == "best=3"
    assert overrides == ["model=gru", "trainer.max_time=00:00:10:00"]
    for argv in (["--average", "last"], ["--average", "first=5"], ["model=gru"],
                 ["--evaluate", "--no-evaluate"]):
        with pytest.raises(SystemExit) as e:
            recipe.parse_args(argv)
        assert e.value.code == 2


def test_no_complete_run(tmp_path):
    (tmp_path / "seed1").mkdir()
    with pytest.raises(ConfigError, match="no complete run"):
        recipe.complete_runs(tmp_path, None)


def test_splits_that_cannot_be_had_are_skipped_in_one_line(monkeypatch, capsys, toy_dir,
                                                           tmp_path):
    def fetch(corpus, split, *args):
        if split != "test_2016_flickr":
            raise DataError(f"cannot download {split}")

    monkeypatch.setattr(recipe, "fetch_split", fetch)
    data = recipe.OmegaConf.create({"corpus": "multi30k", "src_lang": "en", "tgt_lang": "de",
                                    "root": str(tmp_path), "local_dir": None})
    available, skipped = recipe.test_splits(data, None)
    assert available == ["test_2016_flickr"]
    assert list(skipped) == ["test_2017_flickr", "test_2017_mscoco", "test_2018_flickr"]
    assert capsys.readouterr().out == ("skipped test split(s) that cannot be fetched here: "
                                       "test_2017_flickr, test_2017_mscoco, test_2018_flickr\n")
    with pytest.raises(DataError, match="has no split 'test_2019'"):
        recipe.test_splits(data, ["test_2019"])
    files = recipe.OmegaConf.create(files_config(toy_dir, tmp_path))
    files.files.test.tgt = str(tmp_path / "missing.de")
    with pytest.raises(DataError, match="none of the test splits test can be had here"):
        recipe.test_splits(files, None)
