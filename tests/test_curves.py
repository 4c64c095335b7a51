"""Training curves (nmt/training/curves.py): every run draws curves.png, and
``python -m nmt.cli curves`` overlays several runs labelled by how their configs differ."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import files_config
from PIL import Image
from train_helpers import ROOT, compose_train, toy_overrides

from nmt.core.errors import ConfigError
from nmt.training.curves import labels, plot_runs, read_curves, write_atomically

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"


def short_run(toy_dir: Path, tmp: Path, name: str, *more: str) -> Path:
    from nmt.training.train import train

    run = tmp / name
    train(compose_train([*toy_overrides(files_config(toy_dir, tmp / "cache"), run),
                         "trainer.max_epochs=2", "test_after_training=false", *more]))
    return run


@pytest.fixture(scope="module")
def three_runs(toy_dir, tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("curves")
    return [short_run(toy_dir, tmp, cell, f"model.cell={cell}") for cell in ("rnn", "gru", "lstm")]


def test_a_run_draws_its_curves(three_runs):
    run = three_runs[0]
    png = run / "curves.png"
    assert png.read_bytes()[:8] == PNG
    with Image.open(png) as image:
        assert image.size[0] > 800 and image.size[1] > 400
    curves = read_curves(run)
    steps, loss = curves["train/loss"]
    assert len(steps) == len(loss) > 5 and (steps[1:] >= steps[:-1]).all()
    assert len(curves["val/bleu"][0]) == 2  # one validation an epoch
    assert len(curves["lr"][0]) > 0 and "val/train_minutes" in curves


def test_runs_are_overlaid_and_labelled_by_what_differs(three_runs, tmp_path):
    assert labels(three_runs) == ["model.cell=rnn", "model.cell=gru", "model.cell=lstm"]
    out = tmp_path / "cmp.png"
    result = subprocess.run([sys.executable, "-m", "nmt.cli", "curves",
                             f"runs=[{','.join(map(str, three_runs))}]", f"output={out}"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG
    assert str(out) in result.stdout


def test_a_directory_that_is_no_run_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"no logs/metrics\.csv \(not a run directory\?\)"):
        plot_runs([tmp_path], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="runs is empty"):
        plot_runs([], tmp_path / "x.png")


def test_outputs_are_whole_or_not_written(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; give a file name"):
        write_atomically(tmp_path, lambda tmp: tmp.write_text("x"))
    target = tmp_path / "out" / "a.json"
    write_atomically(target, lambda tmp: tmp.write_text("old"))

    def fails(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(ConfigError, match=r"cannot write .*a\.json \(No space left on device\)"):
        write_atomically(target, fails)
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary file left
