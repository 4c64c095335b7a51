"""Training: config groups, a fast_dev_run, resume, DDP on CPU (gloo), bf16 on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from conftest import files_config
from lightning.pytorch.callbacks import Timer
from omegaconf import OmegaConf
from train_helpers import ROOT, compose_train, fit_recorded, toy_overrides, train_two_ranks

from nmt.core.errors import ConfigError
from nmt.training.loss import label_smoothed_nll
from nmt.training.module import TranslationModule
from nmt.training.optim import check_optim
from nmt.training.train import build, check_trainer, plain, train


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.fixture
def toy_cfg(toy_dir, tmp_path) -> dict:
    return files_config(toy_dir, tmp_path / "cache")


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [m for m in choices("model") if m in ("lstm", "gru", "rnn")])
@pytest.mark.parametrize("optim", choices("optim"))
def test_model_and_optim_configs_build(model, optim):  # image models: test_captioning.py
    cfg = compose_train([f"model={model}", f"optim={optim}", "optim.scheduler.total_steps=100"]
                        if optim == "adam_cosine" else [f"model={model}", f"optim={optim}"])
    check_optim(plain(cfg.optim))
    module = TranslationModule(20, 20, plain(cfg.model), plain(cfg.optim),
                               cfg.loss.label_smoothing, plain(cfg.validation))
    assert module.model.__class__.__name__ == "Seq2Seq"
    # The built recurrences are the config's cell, in the encoder and the decoder.
    rnn_class = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[model]
    assert type(module.model.encoder.rnn).__name__ == rnn_class
    assert type(module.model.decoder.rnn).__name__ == rnn_class
    opt = module.configure_optimizers()
    assert type(opt["optimizer"]).__name__ == cfg.optim._target_.rsplit(".", 1)[1]
    scheduler = opt["lr_scheduler"]["scheduler"]
    assert type(scheduler).__name__ == {"adam": "ReduceLROnPlateau", "sgd": "ReduceLROnPlateau",
                                        "adamw": "LambdaLR", "adam_cosine": "LambdaLR",
                                        "adam_cosine_cpu60": "LambdaLR",
                                        "adam_cosine_timed": "TimedCosine"}[optim]
    if optim == "adam_cosine_cpu60":  # its own length, not the trainer's estimate
        assert scheduler.lr_lambdas[0].keywords["total_steps"] == 4400


@pytest.mark.parametrize("trainer", choices("trainer"))
def test_trainer_configs_instantiate(trainer, tmp_path):
    cfg = plain(compose_train([f"trainer={trainer}"]).trainer)
    check_trainer(cfg)
    if cfg["accelerator"] == "gpu":  # no GPU here: same arguments on the CPU
        cfg.update(accelerator="cpu", precision="bf16-mixed",
                   devices=2 if cfg.get("strategy") == "ddp" else 1)
    t = L.Trainer(**cfg, default_root_dir=tmp_path, logger=False)
    assert autocast_dtype(t) == PRECISION_DTYPES[cfg["precision"]]
    assert t.max_epochs == (1 if cfg.get("fast_dev_run") else cfg["max_epochs"])


PRECISION_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}


def autocast_dtype(trainer: L.Trainer) -> torch.dtype:
    """The dtype of a matmul under the trainer's precision plugin, as in a training step."""
    with trainer.precision_plugin.forward_context():
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype


def leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The values of a nested config mapping by dotted key (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def group_values(group: str, choice: str) -> dict[str, Any]:
    """The values a group file sets by dotted key, over those of the files of its own group
    it names in its defaults (data/multi30k_de_en.yaml over multi30k_en_de.yaml); schemas
    set none."""
    node = plain(OmegaConf.load(ROOT / "conf" / group / f"{choice}.yaml"))
    values: dict[str, Any] = {}
    for parent in node.pop("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and not parent.startswith("schema"):
            values.update(group_values(group, parent))
    values.update(leaves(node, f"{group}."))
    return values


@pytest.mark.parametrize("name", choices("experiment"))
def test_experiment_configs_compose(name):
    cfg = compose_train([f"experiment={name}"])
    check_optim(plain(cfg.optim))
    TranslationModule(20, 20, plain(cfg.model), plain(cfg.optim))
    # The composed config holds every value the experiment file sets, and those of each
    # group it overrides (the file's own values winning), over train.yaml's defaults.
    recipe = plain(OmegaConf.load(ROOT / "conf" / "experiment" / f"{name}.yaml"))
    expected: dict[str, Any] = {}
    for entry in recipe.pop("defaults", []):
        [(key, choice)] = entry.items()  # {"override /optim": "adam_cosine_timed"}
        expected.update(group_values(key.removeprefix("override /"), choice))
    expected.update(leaves(recipe))
    composed, default = leaves(plain(cfg)), leaves(plain(compose_train([])))
    assert {k: composed.get(k, "(missing)") for k in expected} == expected
    assert len([k for k, v in expected.items() if default.get(k) != v]) >= 5


@pytest.mark.parametrize(("override", "match"), [
    ("model.cell=transformer", r"model: unknown cell 'transformer'.*lstm"),
    ("model.attention=magic", r"model: unknown attention 'magic'.*bahdanau"),
    ("model.emb_size=-4", "model: .*emb_size"),
    ("optim._target_=torch.optim.Adagradx", "optim: unknown _target_ 'torch.optim.Adagradx'"),
    ("+optim.foo=1", r"optim: unknown key\(s\) \['foo'\] for torch.optim.Adam; valid keys: "
                     r"amsgrad, betas, .*, lr,"),
    ("optim.betas=[1.5,0.9]", "optim: torch.optim.Adam: Invalid beta parameter at index 0"),
    ("optim.lr=0", "optim.lr must be positive, got 0"),
    ("optim.scheduler._target_=torch.optim.lr_scheduler.StepLRx",
     "optim.scheduler: unknown _target_ 'torch.optim.lr_scheduler.StepLRx'"),
    ("+optim.scheduler.foo=1", r"optim.scheduler: unknown key\(s\) \['foo'\] for "
                               r"torch.optim.lr_scheduler.ReduceLROnPlateau; valid keys: .*factor"),
    ("optim.scheduler.interval=batch", "optim.scheduler.interval must be one of step, epoch"),
    ("+optim.scheduler.mode=max", "optim.scheduler.mode: follows callbacks.monitor"),
    ("+trainer.max_epoch=3", r"trainer: unknown key\(s\) \['max_epoch'\]"),
    ("optim=adam_cosine_timed", "TimedCosine ends when the run's time is spent; set "
                                "trainer.max_time"),
    ("loss.label_smoothing=1.5", r"label_smoothing must be in \[0, 1\)"),
    ("+validation.beam=3", r"validation: unknown key\(s\) \['beam'\]; valid keys: beam_size"),
    ("test_decoding.beam_size=0", "decoding: beam_size must be >= 1, got 0"),
    ("model.tie_src_tgt=true tokenizer=spm_separate", "tie_src_tgt=true needs a joint"),
])
def test_bad_config_fails_before_data(override, match, tmp_path):
    # data.root points nowhere: the error must come before any data is touched.
    cfg = compose_train([*override.split(), f"data.root={tmp_path / 'untouched'}",
                         "data.local_dir=/nonexistent", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=match):
        build(cfg, tmp_path / "run")
    assert not (tmp_path / "untouched").exists()


def test_missing_data_files_fail_at_start(toy_cfg, tmp_path):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"),
                         "data.files.train.src=/no/such/train.en"])
    with pytest.raises(Exception, match=r"/no/such/train\.en: file not found"):
        build(cfg, tmp_path / "run")


# --- loss ------------------------------------------------------------------------------------


def test_label_smoothed_loss_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(4, 11, (3, 5))
    target[0, 3:] = 0
    loss, nll, n = label_smoothed_nll(logits, target, 0.1)
    ref = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, ref(logits.view(-1, 11), target.view(-1)))
    torch.testing.assert_close(nll, torch.nn.CrossEntropyLoss(ignore_index=0, reduction="sum")(
        logits.view(-1, 11), target.view(-1)))
    assert n == 13


# --- training runs ---------------------------------------------------------------------------


def test_fast_dev_run_with_any_torch_optimizer(toy_cfg, tmp_path):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"), "trainer=debug",
                         "optim._target_=torch.optim.RAdam"])
    recorder, trainer = fit_recorded(cfg)
    assert trainer.global_step == 1 and len(recorder.steps) == 1
    assert type(trainer.optimizers[0]).__name__ == "RAdam"


def test_timed_cosine_is_replanned_from_the_pace_and_checkpointed(toy_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = compose_train([*toy_overrides(toy_cfg, run), "optim=adam_cosine_timed",
                         "optim.scheduler.warmup_steps=2", "optim.scheduler.replan_every=4",
                         "trainer.max_steps=12", 'trainer.max_time="00:00:30:00"'])
    _, trainer = fit_recorded(cfg)
    schedule = trainer.lr_scheduler_configs[0].scheduler
    # Replanned at step 12 after e <= t seconds (t: the Timer's time at the end), so the
    # plan is 12 + (1800 - e) * 12 / e >= 12 + (1800 - t) * 12 / t, and finite.
    [timer] = [c for c in trainer.callbacks if isinstance(c, Timer)]
    t = timer.time_elapsed()
    assert 12 + (1800 - t) * 12 / t <= schedule.total_steps < float("inf")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    [state] = saved["lr_schedulers"]
    assert state["total_steps"] == schedule.total_steps and "replan_every" not in state


def test_train_writes_run_dir_and_checkpoint_with_tokenizers(toy_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = compose_train([*toy_overrides(toy_cfg, run), "trainer.max_epochs=2"])
    metrics = train(cfg)
    assert {"val/bleu", "val/chrf", "val/loss", "val/ppl", "test/bleu"} <= set(metrics)
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    assert "=" not in best.name  # usable as checkpoint=PATH in a Hydra override
    assert list((run / "tensorboard").glob("events.*"))
    logged = (run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/ppl", "train/acc", "train/tokens_per_s", "val/bleu",
            "val/train_minutes"} <= set(logged)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["test/bleu_signature"].startswith("nrefs:1|case:mixed|")  # the last scores
    assert "test/chrf_signature" in summary and "val/bleu_signature" not in summary
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["tokenizers"]["src"] and ckpt["tokenizers"]["tgt"]
    assert ckpt["hyper_parameters"]["model"]["cell"] == "lstm"


def test_resume_continues_steps_and_data_order(toy_cfg, tmp_path):
    base = toy_overrides(toy_cfg, tmp_path / "full")
    full, _ = fit_recorded(compose_train([*base, "trainer.max_steps=40"]))
    assert len(full.steps) == 40
    epochs = [[tuple(i) for e, _, i in full.steps if e == epoch] for epoch in (0, 1)]
    assert sorted(i for b in epochs[0] for i in b) == list(range(600))  # each example once
    assert epochs[1] and epochs[0][: len(epochs[1])] != epochs[1]  # a new order next epoch

    part_dir = tmp_path / "part"
    part_args = [*toy_overrides(toy_cfg, part_dir), "callbacks.every_n_train_steps=5",
                 "trainer.max_steps=40"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_recorded(compose_train(part_args), crash_at=12)  # last.ckpt is from step 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second, trainer = fit_recorded(compose_train([*part_args, "ckpt_path=last"]))
    # The datamodule restores the position, so Lightning's mid-epoch warning would be false.
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert second.steps[0][1] == 10  # the step count continues
    assert trainer.global_step == 40
    assert second.steps == full.steps[10:]  # the same batches in the same order


def test_resume_without_checkpoint_is_a_clear_error(toy_cfg, tmp_path):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "empty"), "ckpt_path=last"])
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no .*last\.ckpt to resume from"):
        train(cfg)


def test_bf16_mixed_on_cpu(toy_cfg, tmp_path):
    cfg = compose_train([*toy_overrides(toy_cfg, tmp_path / "run"), "trainer=debug",
                         "trainer.precision=bf16-mixed"])
    dtypes: list[torch.dtype] = []  # of the model's logits in the training step

    class Logits(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            module.model.register_forward_hook(
                lambda model, args, logits: dtypes.append(logits.dtype) if model.training
                else None)

    _, trainer = fit_recorded(cfg, callbacks=[Logits()])
    assert trainer.global_step == 1 and dtypes == [torch.bfloat16]  # computed in bf16 ...
    assert {p.dtype for p in trainer.lightning_module.parameters()} == {torch.float32}  # ... mixed


@pytest.mark.slow
def test_ddp_two_cpu_processes_see_disjoint_data(toy_cfg, tmp_path):
    """Also: the timed cosine follows rank 0's clock, so both replicas plan one length."""
    ranks = train_two_ranks([*toy_overrides(toy_cfg, tmp_path / "run"), "trainer.max_steps=6",
                             "optim=adam_cosine_timed", "optim.scheduler.warmup_steps=1",
                             "optim.scheduler.replan_every=2",
                             'trainer.max_time="00:00:30:00"'], tmp_path)
    assert all(r["world_size"] == 2 and r["global_step"] == 6 for r in ranks)
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 6
    seen = [{i for _, _, idx in r["steps"] for i in idx} for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    plans = [r["total_steps"] for r in ranks]
    assert plans[0] == plans[1] and 6 < plans[0][0] < float("inf")
    assert ranks[0]["lr"] == ranks[1]["lr"]


def test_train_command_line(toy_cfg, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *toy_overrides(toy_cfg, run),
         "trainer.max_epochs=1", "test_after_training=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert "val/bleu" in metrics
    assert "val/bleu_lc_signature" in json.loads((run / "metrics.json").read_text())
    assert OmegaConf.load(run / "config.yaml").model.cell == "lstm"


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothed_gradient_matches_torch(smoothing):
    torch.manual_seed(1)
    logits = torch.randn(4, 6, 13, requires_grad=True)
    target = torch.randint(4, 13, (4, 6))
    target[1, 2:] = 0
    loss, _, _ = label_smoothed_nll(logits, target, smoothing)
    (grad,) = torch.autograd.grad(loss * 0.7, logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=smoothing, reduction="sum")
    (ref(ref_logits.view(-1, 13), target.view(-1)) * 0.7).backward()
    torch.testing.assert_close(grad, ref_logits.grad)
    assert torch.all(grad[1, 2:] == 0)  # padding gets no gradient


@pytest.mark.slow
def test_hydra_multirun_sweep(toy_cfg, tmp_path):
    args = [a for a in toy_overrides(toy_cfg, tmp_path) if not a.startswith("run_dir=")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "model=lstm,gru", "trainer=debug",
         *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/config.yaml"))
    assert [OmegaConf.load(p).model.cell for p in runs] == ["lstm", "gru"]
