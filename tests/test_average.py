"""Checkpoint averaging (nmt/inference/average.py, average.py) and the checkpoints training keeps
for it (callbacks.keep_last, callbacks.keep_best), on a tiny run of the toy corpus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import files_config, toy_pairs
from omegaconf import OmegaConf
from train_helpers import ROOT, compose_train, toy_overrides

from nmt.core.errors import CheckpointError, ConfigError
from nmt.data.tokenizer import TokenizerConfig, train_sentencepiece
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.options import Decoding
from nmt.inference.average import average_checkpoints, select_best, select_last
from nmt.inference.average import run as run_average
from nmt.inference.translator import Translator
from nmt.model import build_model, model_record
from nmt.training.train import resolve_ckpt_path

SENTENCES = [s for s, _ in toy_pairs(8, seed=7)]


def outputs(checkpoint: Path) -> list[tuple[list[int], float]]:
    """The tokens and score of every hypothesis: a barely trained model's text may be
    empty, its tokens are not (min_len)."""
    translations = Translator.from_checkpoint(checkpoint).translate(
        SENTENCES, Decoding(beam_size=2, n_best=2, min_len=3))
    return [(h.tokens, h.score) for t in translations for h in t.hypotheses]


@pytest.fixture(scope="module")
def run(toy_dir, tmp_path_factory, one_thread) -> Path:
    """4 epochs of 3 steps, resumed after 2 from last.ckpt, keeping the 2 newest and the
    2 best checkpoints by val/loss."""
    from nmt.training.train import train

    tmp = tmp_path_factory.mktemp("averaging")
    base = [*toy_overrides(files_config(toy_dir, tmp / "cache"), tmp / "run"),
            "+trainer.limit_train_batches=3", "test_after_training=false", "optim.lr=0.01",
            "callbacks.keep_last=2", "callbacks.keep_best=2", "callbacks.monitor=val/loss",
            "callbacks.every_n_minutes=null", "logger=csv"]
    train(compose_train([*base, "trainer.max_epochs=2"]))
    train(compose_train([*base, "trainer.max_epochs=4", "ckpt_path=last"]))
    return tmp / "run"


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def saved_score(path: Path) -> float:
    """The score the best-checkpoint callback saved ``path`` with."""
    states = torch.load(path, weights_only=True)["callbacks"]
    return float(next(state["current_score"] for key, state in states.items()
                      if key.startswith("ModelCheckpoint") and state["monitor"] != "step"))


def fabricate(src: Path, dst: Path, step: int, monitor: str | None = None,
              score: float | None = None, **changes) -> Path:
    """A copy of checkpoint ``src`` saved at ``step``, with ``monitor`` = ``score`` as
    the ModelCheckpoint state that saved it, and other entries changed."""
    ckpt = torch.load(src, weights_only=True)
    ckpt["global_step"] = step
    if monitor is not None:
        ckpt["callbacks"] = {f"ModelCheckpoint{{'monitor': '{monitor}'}}": {
            "monitor": monitor, "current_score": torch.tensor(score)}}
    ckpt.update(changes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def with_model(ckpt_path: Path, dst: Path, config_changes: dict, vocab_size: int = 64) -> Path:
    """Checkpoint ``ckpt_path`` with the weights of a new model: its config changed, its
    vocabularies of ``vocab_size``."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    model = build_model({**ckpt["model_record"]["config"], **config_changes},
                        vocab_size, vocab_size)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    return fabricate(ckpt_path, dst, ckpt["global_step"], state_dict=state,
                     model_record=model_record(model))


# --- what training keeps ---------------------------------------------------------------------


def test_training_keeps_the_newest_and_the_best_across_a_resume(run):
    folder = run / "checkpoints"
    assert names(sorted(folder.glob("epoch*.ckpt"))) == ["epoch02-step9.ckpt",
                                                         "epoch03-step12.ckpt"]
    assert len(list(folder.glob("best-*.ckpt"))) == 2
    assert not [p for p in run.rglob("*") if "=" in p.name]  # no Lightning default checkpoint
    # last.ckpt holds the checkpoint callbacks' states after the epoch's saves (the resume
    # then knows every file it kept, and deletes the right ones).
    last = torch.load(folder / "last.ckpt", weights_only=True)
    kept = {Path(p).name for key, state in last["callbacks"].items()
            if key.startswith("ModelCheckpoint") for p in state["best_k_models"]}
    assert kept == {p.name for p in folder.glob("*.ckpt")} - {"last.ckpt"}


# --- choosing the checkpoints of a run -------------------------------------------------------


def test_last_n_are_the_highest_steps(run):
    assert names(select_last(run, 2)) == ["epoch02-step9.ckpt", "epoch03-step12.ckpt"]
    assert names(select_last(run, 1)) == ["epoch03-step12.ckpt"]


def test_best_n_by_the_score_each_was_saved_with(run, tmp_path):
    scores = {p.name: saved_score(p) for p in (run / "checkpoints").glob("best-*.ckpt")}
    assert names(select_best(run, 1)) == [min(scores, key=scores.get)]  # val/loss: lower
    assert set(names(select_best(run, 2))) == set(scores)

    src = run / "checkpoints" / "last.ckpt"
    folder = tmp_path / "fake" / "checkpoints"
    for step, bleu in ((10, 30.0), (20, 20.0), (30, 25.0), (40, 25.0)):
        fabricate(src, folder / f"best-step{step}.ckpt", step, "val/bleu", bleu)
    # Higher is better; of equal scores, the newer; the chosen come oldest first.
    assert names(select_best(tmp_path / "fake", 2)) == ["best-step10.ckpt", "best-step40.ckpt"]
    # A step saved twice (name-v1 after a resume from an earlier checkpoint) counts once.
    fabricate(src, folder / "best-step10-v1.ckpt", 10, "val/bleu", 30.0)
    assert names(select_best(tmp_path / "fake", 1)) == ["best-step10-v1.ckpt"]
    with pytest.raises(ConfigError, match=r"best=5: .* holds 4 checkpoint\(s\) of "
                                          r"callbacks.keep_best \(best-\*.ckpt\); train with "
                                          r"callbacks.keep_best=5 or more"):
        select_best(tmp_path / "fake", 5)
    fabricate(src, folder / "best-step50.ckpt", 50, "val/chrf", 60.0)
    with pytest.raises(ConfigError, match=r"scored by different metrics \(val/bleu, val/chrf\)"):
        select_best(tmp_path / "fake", 2)
    fabricate(src, folder / "best-step50.ckpt", 50, callbacks={})
    with pytest.raises(CheckpointError, match=r"best-step50\.ckpt: records no validation score"):
        select_best(tmp_path / "fake", 2)


@pytest.mark.parametrize(("n", "match"), [
    (3, r"last=3: .*checkpoints holds 2 checkpoint\(s\) of callbacks.keep_last \(epoch\*.ckpt\); "
        r"train with callbacks.keep_last=3 or more, or name the checkpoints with inputs"),
    (0, "last must be a positive integer .*got 0"),
    ("two", "last must be a positive integer .*got 'two'"),
    (True, "last must be a positive integer .*got True"),
])
def test_too_few_or_a_bad_count_is_refused(run, n, match):
    with pytest.raises(ConfigError, match=match):
        select_last(run, n)


def test_a_folder_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoints/ folder in it; give the directory"):
        select_last(tmp_path, 1)


# --- averaging -------------------------------------------------------------------------------


def test_average_of_one_checkpoint_twice_is_that_checkpoint(run, tmp_path):
    path = run / "checkpoints" / "epoch03-step12.ckpt"
    averaged = average_checkpoints([path, path])
    original = torch.load(path, weights_only=True)["state_dict"]
    assert averaged["state_dict"].keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(averaged["state_dict"][key], value), key
    tied = averaged["state_dict"]["model.generator.weight"]  # tie_embeddings: still one tensor
    assert tied.data_ptr() == averaged["state_dict"]["model.tgt_embed.weight"].data_ptr()
    torch.save(averaged, tmp_path / "avg.ckpt")
    assert outputs(tmp_path / "avg.ckpt") == outputs(path)


def test_average_is_the_elementwise_mean_in_the_newest_checkpoint(run):
    a, b = run / "checkpoints" / "epoch02-step9.ckpt", run / "checkpoints" / "epoch03-step12.ckpt"
    averaged = average_checkpoints([b, a])
    wa, wb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    for key in wa:
        mean = ((wa[key].double() + wb[key].double()) / 2).to(wa[key].dtype)
        assert torch.equal(averaged["state_dict"][key], mean), key
    assert averaged["global_step"] == 12 and averaged["epoch"] == 3  # the newest's
    assert averaged["averaged_from"] == [str(b.resolve()), str(a.resolve())]
    table = torch.load(b, weights_only=True)["shortlist"]  # the lexical shortlist goes along
    assert all(torch.equal(averaged["shortlist"][k], table[k]) for k in table)
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & set(averaged)


def test_different_vocabularies_are_refused_naming_both_files(run, tmp_path):
    a = run / "checkpoints" / "epoch03-step12.ckpt"
    bigger = with_model(a, tmp_path / "bigger.ckpt", {}, vocab_size=80)
    with pytest.raises(CheckpointError) as error:
        average_checkpoints([a, bigger])
    assert str(error.value) == (f"{a} and {bigger} cannot be averaged: different vocabularies "
                                "(src_vocab_size 64 vs 80, tgt_vocab_size 64 vs 80)")
    # The same size, other pieces: a BPE model instead of the unigram one.
    other = train_sentencepiece([s for pair in toy_pairs(600) for s in pair], TokenizerConfig(
        vocab_size=64, model_type="bpe", input_sentence_size=0))
    tokenizers = torch.load(a, weights_only=True)["tokenizers"]
    assert other.model_proto != tokenizers["tgt"]
    retrained = fabricate(a, tmp_path / "retrained.ckpt", 12,
                          tokenizers={**tokenizers, "tgt": other.model_proto})
    with pytest.raises(CheckpointError, match=r"retrained.ckpt cannot be averaged: different "
                                              r"vocabularies \(the target SentencePiece models "
                                              r"differ\)$"):
        average_checkpoints([a, retrained])


def test_different_architectures_are_refused(run, tmp_path):
    a = run / "checkpoints" / "epoch03-step12.ckpt"
    wider = with_model(a, tmp_path / "wider.ckpt", {"decoder_hidden": 32, "cell": "gru"})
    with pytest.raises(CheckpointError) as error:
        average_checkpoints([a, wider])
    assert str(error.value) == (f"{a} and {wider} cannot be averaged: different architectures "
                                "(cell 'lstm' vs 'gru', decoder_hidden 24 vs 32)")


def test_averaged_checkpoint_loads_translates_and_is_not_resumable(run, tmp_path):
    output = tmp_path / "out" / "avg.ckpt"
    summary = run_average(settings(run_dir=str(run), last=2, output=str(output)))
    assert summary["global_step"] == 12 and len(summary["averaged_from"]) == 2
    ckpt = load_checkpoint(output)  # weights_only=True
    assert ckpt["averaged_from"] == summary["averaged_from"]
    hypotheses = outputs(output)
    assert len(hypotheses) == 2 * len(SENTENCES) and all(tokens for tokens, _ in hypotheses)
    with pytest.raises(CheckpointError, match=r"avg.ckpt: an average of 2 checkpoints "
                                              r"\(average.py\) holds weights only and cannot "
                                              r"be resumed"):
        resolve_ckpt_path(str(output), "toy", None)


def settings(**values):
    """conf/average.yaml with ``values``."""
    return OmegaConf.create({"run_dir": None, "last": None, "best": None, "inputs": None,
                             "output": None, **values})


@pytest.mark.parametrize(("values", "match"), [
    ({"output": "x.ckpt"}, r"give one of last=N or best=N \(with run_dir=RUN\), or inputs="),
    ({"last": 2, "best": 2, "run_dir": "RUN", "output": "x.ckpt"}, r"\(got last and best\)"),
    ({"last": 2, "output": "x.ckpt"}, "last=2 needs run_dir=RUN"),
    ({"inputs": ["A", "A"], "output": "x.ckpt"}, "inputs: .*epoch03-step12.ckpt is named twice"),
    ({"inputs": ["A"], "run_dir": "RUN", "output": "x.ckpt"}, "run_dir goes with last=N"),
    ({"inputs": ["A", "/no/such.ckpt"], "output": "x.ckpt"}, "/no/such.ckpt: checkpoint not found"),
    ({"inputs": "A", "output": "A"}, "output=.* is one of the checkpoints to average"),
    ({"run_dir": "RUN", "last": 2}, "give output=FILE"),
])
def test_bad_settings_are_refused(run, values, match):
    # A: a checkpoint of the run, RUN: the run's directory.
    fill = {"A": str(run / "checkpoints" / "epoch03-step12.ckpt"), "RUN": str(run)}.get
    values = {k: [fill(x, x) for x in v] if isinstance(v, list) else fill(v, v)
              for k, v in values.items()}
    with pytest.raises((ConfigError, CheckpointError), match=match):
        run_average(settings(**values))


# --- the command -----------------------------------------------------------------------------


def average_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "average.py"), *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300)


def test_average_command_writes_a_checkpoint_every_tool_loads(run, tmp_path):
    result = average_command(f"run_dir={run}", "best=2", "output=avg.ckpt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == "avg.ckpt" and len(summary["averaged_from"]) == 2
    ckpt = torch.load(tmp_path / "avg.ckpt", weights_only=True)
    assert "optimizer_states" not in ckpt and ckpt["tokenizers"]["tgt"]


@pytest.mark.parametrize(("args", "message"), [
    (["last=3"], r"error: last=3: \S+ holds 2 checkpoint\(s\) of callbacks.keep_last"),
    (["inputs=[A,B]"], r"error: \S+epoch03-step12.ckpt and \S+bigger.ckpt cannot be averaged: "
                       r"different vocabularies \(src_vocab_size 64 vs 80, tgt_vocab_size 64 "
                       r"vs 80\)$"),
])
def test_average_command_errors_are_one_line(run, tmp_path, args, message):
    a = run / "checkpoints" / "epoch03-step12.ckpt"
    bigger = with_model(a, tmp_path / "bigger.ckpt", {}, vocab_size=80)
    args = [arg.replace("A", str(a)).replace("B", str(bigger)) if arg.startswith("inputs")
            else arg for arg in args]
    extra = [] if args[0].startswith("inputs") else [f"run_dir={run}"]
    result = average_command(*extra, *args, "output=avg.ckpt", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert re.match(message, last_line), last_line
    assert "Traceback" not in result.stderr and not (tmp_path / "avg.ckpt").exists()
