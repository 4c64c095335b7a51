"""The pieces around the LightningModule: optimizer and scheduler by config, schedules,
sacrebleu signatures. Training runs that use them are in test_train.py."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.errors import ConfigError
from nmt.metrics import corpus_scores, signatures
from nmt.optim import build_optimizer, follows_metric

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01}
PLATEAU = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True,
           "factor": 0.5, "interval": "epoch"}


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


def no_estimate() -> int:
    raise AssertionError("the run's length was not needed here")


def test_no_scheduler_gives_the_optimizer_alone():
    made = build_optimizer({**ADAM, "scheduler": None}, params(), ("val/bleu", "max"),
                           no_estimate)
    assert isinstance(made, torch.optim.Adam) and made.defaults["lr"] == 0.01


@pytest.mark.parametrize(("monitor", "mode"), [("val/bleu", "max"), ("val/loss", "min")])
def test_plateau_follows_the_monitor(monitor, mode):
    made = build_optimizer({**ADAM, "scheduler": PLATEAU}, params(), (monitor, mode),
                           no_estimate)
    config = made["lr_scheduler"]
    assert config["scheduler"].mode == mode and config["scheduler"].factor == 0.5
    assert config["monitor"] == monitor and config["interval"] == "epoch"
    assert config["strict"] is False
    assert follows_metric({"scheduler": PLATEAU})


def test_any_torch_scheduler_by_target():
    step_lr = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "gamma": 0.1,
               "interval": "step"}
    made = build_optimizer({**ADAM, "scheduler": step_lr}, params(), ("val/bleu", "max"),
                           no_estimate)
    assert type(made["lr_scheduler"]["scheduler"]).__name__ == "StepLR"
    assert made["lr_scheduler"] == {"scheduler": made["lr_scheduler"]["scheduler"],
                                    "interval": "step"}  # no metric to follow
    assert not follows_metric({"scheduler": step_lr})


def lrs(made: dict, steps: int) -> list[float]:
    optimizer, scheduler = made["optimizer"], made["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_cosine_runs_to_min_lr_over_the_estimated_steps():
    cosine = {"_target_": "nmt.schedules.warmup_cosine", "warmup_steps": 4, "min_lr": 0.001,
              "total_steps": None, "interval": "step"}
    made = build_optimizer({**ADAM, "scheduler": cosine}, params(), ("val/bleu", "max"),
                           total_steps=lambda: 20)
    lr = lrs(made, 25)
    assert lr[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # warmup
    assert max(lr) == pytest.approx(0.01)
    assert lr[20] == pytest.approx(0.001) and lr[24] == pytest.approx(0.001)  # min_lr: absolute
    explicit = build_optimizer({**ADAM, "scheduler": {**cosine, "total_steps": 10}}, params(),
                               ("val/bleu", "max"), no_estimate)
    assert lrs(explicit, 11)[10] == pytest.approx(0.001)


def test_warmup_inverse_sqrt_peaks_at_warmup_then_decays():
    inv = {"_target_": "nmt.schedules.warmup_inverse_sqrt", "warmup_steps": 4,
           "interval": "step"}
    lr = lrs(build_optimizer({**ADAM, "scheduler": inv}, params(), ("val/bleu", "max"),
                             no_estimate), 16)
    assert lr[3] == pytest.approx(0.01) and lr[:3] == pytest.approx([0.0025, 0.005, 0.0075])
    assert lr[15] == pytest.approx(0.01 * math.sqrt(4 / 16))


@pytest.mark.parametrize(("optim", "match"), [
    ({"lr": 0.1}, "optim: no _target_; name one, e.g. torch.optim.Adam"),
    ({**ADAM, "_target_": "torch.nn.Identity"}, "made a Identity, not an optimizer"),
    ({**ADAM, "_target_": "torch.optim"}, "optim._target_: torch.optim cannot be called"),
    ({**ADAM, "scheduler": {"_target_": "torch.nn.Identity"}},
     "optim.scheduler._target_: torch.nn.Identity made a Identity, not a scheduler"),
])
def test_targets_that_are_not_what_they_should_be(optim, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer(optim, params(), ("val/bleu", "max"), no_estimate)


def test_signatures_are_those_of_the_scores():
    scores = corpus_scores(["a small boat ."], ["a big boat ."], ("bleu", "chrf", "bleu_lc"))
    assert signatures(("bleu", "chrf", "bleu_lc")) == {
        k: v for k, v in scores.items() if k.endswith("_signature")}


def test_warmup_cosine_needs_a_finite_run():
    cosine = {"_target_": "nmt.schedules.warmup_cosine", "total_steps": None}
    with pytest.raises(ConfigError, match=r"optim.scheduler: .*set optim.scheduler.total_steps"):
        build_optimizer({**ADAM, "scheduler": cosine}, params(), ("val/bleu", "max"),
                        total_steps=lambda: float("inf"))
