"""Fine-tuning (init_from, nmt/training/finetune.py): the checkpoint's architecture,
tokenizers and weights; a fresh optimizer, schedule and step counter; refusals in one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import files_config
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from train_helpers import ROOT, compose_train, fit_recorded, toy_overrides

from nmt.core.errors import ConfigError
from nmt.decoding.checkpoints import atomic_torch_save, load_checkpoint
from nmt.inference.average import average_checkpoints
from nmt.training.finetune import command_line, load_init, run_config
from nmt.training.train import build, train

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "test_after_training=false"]


def toy(toy_dir: Path, tmp: Path, root: Path, *extra: str) -> list[str]:
    """The toy corpus, cached under ``root``, a run in tmp/run: a tiny LSTM."""
    return [*toy_overrides(files_config(toy_dir, root), tmp / "run"), *SHORT, *extra]


def weights(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def no_command_line():
    """No Hydra record of a command line (a config composed in Python), whatever ran
    before: every model option counts as given."""
    kept = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    yield
    HydraConfig.instance().cfg = kept


@pytest.fixture(scope="module")
def base(toy_dir, tmp_path_factory, one_thread) -> Path:
    """The checkpoints/ of a toy model trained 2 epochs of 2 steps, both epochs' kept."""
    tmp = tmp_path_factory.mktemp("base")
    train(compose_train(toy(toy_dir, tmp, tmp / "cache", "trainer.max_epochs=2",
                            "callbacks.keep_last=2", "optim.lr=0.01")))
    return tmp / "run" / "checkpoints"


class AtStart(L.Callback):
    """The step, optimizer state, learning rate and weights as training starts."""

    def on_train_start(self, trainer, module) -> None:
        optimizer = trainer.optimizers[0]
        self.step, self.state = trainer.global_step, len(optimizer.state)
        self.lr = optimizer.param_groups[0]["lr"]
        self.weights = {k: v.clone() for k, v in module.model.state_dict().items()}


def test_fine_tuning_starts_from_the_weights_with_a_fresh_optimizer(base, toy_dir, tmp_path):
    ckpt = load_checkpoint(base / "last.ckpt")
    assert ckpt["global_step"] == 4
    root = tmp_path / "cache"  # new: the data is encoded again, with the checkpoint's pieces
    # Tokenizer settings that only train a tokenizer are not used (a note in the log).
    cfg = compose_train(toy(toy_dir, tmp_path, root, f"init_from={base / 'last.ckpt'}",
                            "tokenizer.model_type=bpe", "model.dropout=0.1", "optim.lr=0.005"))
    start = AtStart()
    recorder, trainer = fit_recorded(cfg, callbacks=[start])
    assert start.step == 0 and start.state == 0 and start.lr == 0.005
    assert recorder.steps[0][:2] == (0, 0) and trainer.global_step == 2
    assert same_weights(start.weights, weights(ckpt))
    tuned = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert tuned["tokenizers"] == ckpt["tokenizers"]  # byte for byte
    assert tuned["hyper_parameters"]["model"]["dropout"] == 0.1
    assert tuned["model_record"]["config"] == {**ckpt["model_record"]["config"], "dropout": 0.1}
    # No tokenizer trained; the encoded splits are keyed by the checkpoint's tokenizers,
    # so they have the keys of the base run's, whose tokenizers they are.
    assert not (root / "toy" / "spm").exists()
    encoded = sorted(p.name for p in (root / "toy" / "encoded").iterdir())
    assert encoded == sorted(p.name for p in (base.parents[1] / "cache" / "toy" / "encoded")
                             .iterdir())
    digest = hashlib.sha256(ckpt["tokenizers"]["src"]).hexdigest()[:16]
    meta = json.loads(next((root / "toy" / "encoded").glob("*/train/meta.json")).read_text())
    assert meta["src_tokenizer"] == meta["tgt_tokenizer"] == digest

    # A preempted fine-tuning run resumes with both (its resume command keeps init_from).
    again = compose_train([*toy(toy_dir, tmp_path, root, f"init_from={base / 'last.ckpt'}",
                                "model.dropout=0.1"), "trainer.max_epochs=2", "ckpt_path=last"])
    recorder, trainer = fit_recorded(again)
    assert recorder.steps[0][1] == 2 and trainer.global_step == 4


def test_a_changed_architecture_is_refused_in_one_line(base, toy_dir, tmp_path):
    cfg = compose_train(toy(toy_dir, tmp_path, tmp_path / "cache",
                            f"init_from={base / 'last.ckpt'}", "model.encoder_hidden=32"))
    with pytest.raises(ConfigError) as e:
        train(cfg)
    message = str(e.value)
    assert "\n" not in message and message.startswith("model.encoder_hidden=32: ")
    assert "encoder_hidden is 16" in message and "leave it out" in message
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_command_line_refusal_is_one_line(base, toy_dir, tmp_path):
    args = [*toy(toy_dir, tmp_path, tmp_path / "cache"), f"init_from={base / 'last.ckpt'}",
            "model.encoder_hidden=32"]
    result = subprocess.run([sys.executable, "-m", "nmt.cli", "train", *args], cwd=tmp_path,
                            text=True, capture_output=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: model.encoder_hidden=32: fine-tuning keeps the "
                                "architecture of init_from=")
    assert "Traceback" not in result.stderr


def test_only_options_given_on_the_command_line_must_match(base):
    init = load_init(str(base / "last.ckpt"))
    cfg = compose_train(["model=gru", "model.dropout=0.25", "model.encoder_hidden=32",
                         "tokenizer=spm_separate"])
    # Chosen by the config files (an experiment, say), not the command line: replaced.
    out = run_config(cfg, init, frozenset({"init_from", "model.dropout"}))
    assert out.model.cell == "lstm" and out.model.encoder_hidden == 16
    assert out.model.dropout == 0.25 and out.tokenizer.joint
    assert out.name.endswith("rnn_lstm-bahdanau") and cfg.model.cell == "gru"
    # model=gru on the command line gives every option: the first that differs is named.
    for given, key in [({"model"}, r"model\.emb_size=256: "),
                       ({"model.encoder_hidden"}, r"model\.encoder_hidden=32: "),
                       ({"tokenizer"}, r"tokenizer\.joint=false: .* whose joint is true"),
                       ({"tokenizer.vocab_size"}, r"tokenizer\.vocab_size=8000: .* is 64;")]:
        with pytest.raises(ConfigError, match=f"^{key}"):
            run_config(cfg, init, frozenset(given))
    # Settings that only train a tokenizer (none is trained), and sampling, may be given.
    run_config(cfg, init, frozenset({"tokenizer.model_type", "tokenizer.sampling.enabled"}))


def test_the_command_line_keys_come_from_hydra():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=gru", "+trainer.limit_val_batches=1",
                                          "model.dropout=0.1"], return_hydra_config=True)
    assert command_line() is None
    HydraConfig.instance().set_config(cfg)
    assert command_line() == {"model", "trainer.limit_val_batches", "model.dropout"}


@pytest.mark.parametrize(("extra", "message"), [
    (["init_from=/no/such.ckpt"], "init_from=/no/such.ckpt: no such checkpoint file"),
    (["ckpt_path=MODIFIED"], "ckpt_path=.* and init_from=.* contradict: "),
])
def test_init_from_mistakes_are_one_line(base, toy_dir, tmp_path, extra, message):
    if extra == ["ckpt_path=MODIFIED"]:  # a run of another model: it cannot resume from this
        other = torch.load(base / "last.ckpt", weights_only=True)
        other["model_record"]["config"]["encoder_hidden"] = 8
        torch.save(other, tmp_path / "other.ckpt")
        extra = [f"init_from={base / 'last.ckpt'}", f"ckpt_path={tmp_path / 'other.ckpt'}"]
    with pytest.raises(ConfigError, match=message) as e:
        train(compose_train(toy(toy_dir, tmp_path, tmp_path / "cache", *extra)))
    assert "\n" not in str(e.value)


def test_an_average_fine_tunes(base, toy_dir, tmp_path):
    averaged = average_checkpoints(sorted(base.glob("epoch*.ckpt")))
    atomic_torch_save(averaged, tmp_path / "average.ckpt")
    cfg = compose_train(toy(toy_dir, tmp_path, tmp_path / "cache",
                            f"init_from={tmp_path / 'average.ckpt'}",
                            "++trainer.limit_train_batches=1"))
    _, module, _ = build(cfg, tmp_path / "probe")
    assert same_weights(module.model.state_dict(), weights(averaged))
    metrics = train(cfg)
    assert "val/loss" in metrics
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["init_from"] == str(tmp_path / "average.ckpt")


# --- captioning ------------------------------------------------------------------------------

CAPTION = ["task=caption", "data.shapes.train=48", "data.shapes.valid=8", "data.shapes.test=8",
           "model.channels=[8,16,16,16,16]", "model.emb_size=16", "model.decoder_hidden=32",
           "model.dropout=0.0", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "logger=csv",
           "callbacks.early_stopping_patience=null", "batching.max_tokens=256", *SHORT]


def caption(data: Path, run: Path, *extra: str) -> list[str]:
    return [*CAPTION, f"data.root={data}", f"run_dir={run}", *extra]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(last.ckpt, data root) of a tiny captioner trained 2 steps on shapes (from other
    random weights than a run of seed 1 starts with)."""
    tmp = tmp_path_factory.mktemp("caption")
    train(compose_train(caption(tmp / "data", tmp / "run", "optim.lr=0.01", "seed=2")))
    return tmp / "run" / "checkpoints" / "last.ckpt", tmp / "data"


def test_a_captioner_fine_tunes_with_its_tokenizer_and_a_frozen_cnn(captioner, tmp_path):
    from nmt.data.captioning import cache_pixels
    from nmt.data.images import normalize

    path, data = captioner
    ckpt = load_checkpoint(path)
    cfg = compose_train(caption(data, tmp_path / "run", f"init_from={path}", "model.freeze=true"))
    start = AtStart()
    _, trainer = fit_recorded(cfg, callbacks=[start])
    assert start.step == 0 and start.state == 0 and trainer.global_step == 2
    assert same_weights(start.weights, weights(ckpt))
    tuned = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert tuned["tokenizers"] == ckpt["tokenizers"] and tuned["tokenizers"]["src"] is None
    # The frozen CNN's features were cached with the checkpoint's weights, not random ones.
    dm = trainer.datamodule
    pixels = np.asarray(cache_pixels(dm.captions.records["valid"], dm.caption_cfg.directory, 64))
    images = normalize(torch.from_numpy(pixels), dm.image.mean, dm.image.std)
    encoder = trainer.lightning_module.model.encoder.eval()
    with torch.no_grad():
        expected = encoder.features(images)
    cached = torch.from_numpy(np.asarray(dm.captions.inputs["valid"])).float()
    assert (cached - expected).abs().max() <= 1e-2 * expected.abs().max()


def test_a_checkpoint_of_the_other_task_is_refused(captioner, base, toy_dir, tmp_path):
    path, data = captioner
    with pytest.raises(ConfigError, match=r"a captioning checkpoint, but task=translate; "
                                          r"fine-tune it with task=caption$"):
        train(compose_train(toy(toy_dir, tmp_path, tmp_path / "cache", f"init_from={path}")))
    with pytest.raises(ConfigError, match=r"a translation checkpoint, but task=caption; "
                                          r"fine-tune it with task=translate$"):
        train(compose_train(caption(data, tmp_path / "run",
                                    f"init_from={base / 'last.ckpt'}")))
