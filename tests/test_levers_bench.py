"""bench/levers.py on tiny toy runs: a baseline and a lever (word dropout), two seeds
each, trained by bench/recipe.py; the table, the scores and the paired bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import files_config
from train_helpers import load_bench, toy_overrides

from nmt.core.errors import ConfigError

recipe = load_bench("recipe")
levers = load_bench("levers")


@pytest.fixture(scope="module")
def runs(toy_dir, tmp_path_factory, one_thread) -> Path:
    """runs/base and runs/wd (model.word_dropout=0.2), seeds 1 and 2, 4 short epochs."""
    tmp = tmp_path_factory.mktemp("levers")
    toy = [o for o in toy_overrides(files_config(toy_dir, tmp / "cache"), tmp)
           if not o.startswith("run_dir=")]
    common = ["--train", "--no-evaluate", "--seeds", "1", "2", "--experiment", "none", *toy,
              "trainer.max_epochs=4", "optim.lr=0.02", "logger=csv"]
    recipe.main([*common, "--runs-dir", str(tmp / "runs" / "base")])
    recipe.main([*common, "--runs-dir", str(tmp / "runs" / "wd"), "model.word_dropout=0.2"])
    return tmp / "runs"


@pytest.fixture(scope="module")
def compared(runs) -> dict:
    return levers.main([str(runs / "base"), f"word dropout 0.2={runs / 'wd'}",
                        f"itself={runs / 'base'}", "--beam-size", "2", "--machine", "toy",
                        "--output", str(runs / "table")])


def test_scores_are_each_seeds_evaluate_py_report(runs, compared):
    assert compared["seeds"] == [1, 2] and compared["splits"] == ["test"]
    lever = compared["levers"]["word dropout 0.2"]
    for name, directory, scores in (("base", runs / "base", compared["baseline"]["scores"]),
                                    ("wd", runs / "wd", lever["scores"])):
        for seed in (1, 2):
            best = json.loads((directory / f"seed{seed}" / "metrics.json").read_text())
            [entry] = json.loads((directory / "evaluation" / f"seed{seed}_single" /
                                  "report.json").read_text())
            assert entry["checkpoint"] == best["best_checkpoint"], name
            assert entry["decoding"]["beam_size"] == 2
            for metric in ("bleu", "bleu_lc"):
                assert scores[metric]["test"]["per_seed"][seed - 1] == entry[metric]
    config = (runs / "wd" / "seed1" / "config.yaml").read_text()
    assert "word_dropout: 0.2" in config


def test_change_and_pooled_bootstrap(compared):
    base = compared["baseline"]["scores"]
    lever = compared["levers"]["word dropout 0.2"]["scores"]
    for metric in ("bleu", "bleu_lc"):
        b, w = base[metric]["test"], lever[metric]["test"]
        assert w["delta"] == pytest.approx(w["mean"] - b["mean"], abs=1e-3)
        assert 0 < w["p"] <= 1 and len(w["p_per_seed"]) == 2
        assert all(0 < p <= 1 for p in w["p_per_seed"])
    # The baseline against itself: no change, and the bootstrap can tell no difference.
    itself = compared["levers"]["itself"]["scores"]["bleu"]["test"]
    assert itself["delta"] == 0 and itself["p"] == 1.0 and itself["p_per_seed"] == [1.0, 1.0]
    assert lever["bleu"]["test"]["per_seed"] != base["bleu"]["test"]["per_seed"]


def test_table_and_budget(runs, compared):
    text = (runs / "table" / "levers.md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()
            if line.startswith("| ")]
    assert rows == ["system", "baseline", "word dropout 0.2", "itself"]
    assert json.loads((runs / "table" / "levers.json").read_text()) == compared
    facts = compared["levers"]["word dropout 0.2"]["runs"]
    assert [f["steps"] for f in facts] == [f["steps"] for f in compared["baseline"]["runs"]]
    assert all(f["steps"] > 0 and f["minutes"] > 0 for f in facts)


def test_lever_names_and_missing_seeds(runs, tmp_path):
    assert levers.parse_lever("lr=3e-3=runs/x") == ("lr=3e-3", Path("runs/x"))
    with pytest.raises(Exception, match="give NAME=DIR"):
        levers.parse_lever("runs/x")
    (tmp_path / "seed1").mkdir()  # started, never completed
    with pytest.raises(ConfigError, match="no seed has a complete run"):
        levers.common_seeds([runs / "base", tmp_path], None)
    assert levers.common_seeds([runs / "base", runs / "wd"], [2, 7]) == [2]
