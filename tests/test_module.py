"""The pieces around the LightningModule: optimizer and scheduler by config, schedules,
sacrebleu signatures. Training runs that use them are in test_train.py."""

from __future__ import annotations

import math
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from nmt.core.errors import ConfigError
from nmt.core.metrics import corpus_scores, signatures
from nmt.training.callbacks import TimedSchedule
from nmt.training.optim import build_optimizer, check_optim, follows_metric
from nmt.training.schedules import TimedCosine

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
    cosine = {"_target_": "nmt.training.schedules.warmup_cosine", "warmup_steps": 4,
              "min_lr": 0.001, "total_steps": None, "interval": "step"}
    made = build_optimizer({**ADAM, "scheduler": cosine}, params(), ("val/bleu", "max"),
                           total_steps=lambda: 20)
    lr = lrs(made, 25)
    assert lr[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # warmup
    assert max(lr) == pytest.approx(0.01)
    assert lr[20] == pytest.approx(0.001) and lr[24] == pytest.approx(0.001)  # min_lr: absolute
    explicit = build_optimizer({**ADAM, "scheduler": {**cosine, "total_steps": 10}}, params(),
                               ("val/bleu", "max"), no_estimate)
    assert lrs(explicit, 11)[10] == pytest.approx(0.001)


def test_a_schedule_named_by_its_path_before_the_package_split_still_builds():
    # Configs and checkpoints written before nmt/ had packages name nmt.schedules.X.
    old = {"_target_": "nmt.schedules.warmup_cosine", "warmup_steps": 4, "min_lr": 0.001,
           "total_steps": 10, "interval": "step"}
    new = {**old, "_target_": "nmt.training.schedules.warmup_cosine"}
    lr_old = lrs(build_optimizer({**ADAM, "scheduler": old}, params(), ("val/bleu", "max"),
                                 no_estimate), 12)
    lr_new = lrs(build_optimizer({**ADAM, "scheduler": new}, params(), ("val/bleu", "max"),
                                 no_estimate), 12)
    assert lr_old == lr_new and lr_old[10] == pytest.approx(0.001)
    assert not follows_metric({"scheduler": old})


def test_warmup_inverse_sqrt_peaks_at_warmup_then_decays():
    inv = {"_target_": "nmt.training.schedules.warmup_inverse_sqrt", "warmup_steps": 4,
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
    cosine = {"_target_": "nmt.training.schedules.warmup_cosine", "total_steps": None}
    with pytest.raises(ConfigError, match=r"optim.scheduler: .*set optim.scheduler.total_steps"):
        build_optimizer({**ADAM, "scheduler": cosine}, params(), ("val/bleu", "max"),
                        total_steps=lambda: float("inf"))


TIMED = {"_target_": "nmt.training.schedules.TimedCosine", "warmup_steps": 4, "min_lr": 0.001,
         "replan_every": 10, "interval": "step"}


def timed() -> tuple[torch.optim.Optimizer, TimedCosine]:
    made = build_optimizer({**ADAM, "scheduler": TIMED}, params(), ("val/bleu", "max"),
                           no_estimate)
    return made["optimizer"], made["lr_scheduler"]["scheduler"]


def test_timed_cosine_ends_at_min_lr_where_the_replanned_length_ends():
    optimizer, schedule = timed()
    lr = []
    for step in range(1, 51):
        lr.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        if step == 10:  # 10 steps took 10 of the run's 40 seconds: 40 steps in all
            schedule.replan(step, elapsed=10.0, limit=40.0)
    assert lr[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # warmup
    assert lr[4:11] == pytest.approx([0.01] * 7)  # no plan yet: no decay
    cosine = [0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * min(1, (s - 4) / 36)))
              for s in range(11, 50)]
    assert lr[11:] == pytest.approx(cosine)
    assert lr[40:] == pytest.approx([0.001] * 10)  # min_lr from the planned end on


def test_timed_cosine_saves_its_plan_not_its_config():
    _, schedule = timed()
    schedule.replan(10, elapsed=5.0, limit=20.0)
    state = schedule.state_dict()
    assert state["total_steps"] == 40.0
    assert not set(TimedCosine.CONFIG) & set(state)
    _, resumed = timed()
    resumed.load_state_dict(state)
    assert resumed.total_steps == 40.0 and resumed.replan_every == 10


def fake_trainer(schedule: TimedCosine, timer: Timer, step: int, rank0_elapsed: float | None
                 ) -> SimpleNamespace:
    def broadcast(value):  # rank 0's (elapsed, limit), as the strategy's broadcast gives it
        return value if rank0_elapsed is None else (rank0_elapsed, 100.0)

    return SimpleNamespace(callbacks=[timer], global_step=step,
                           lr_scheduler_configs=[SimpleNamespace(scheduler=schedule)],
                           strategy=SimpleNamespace(broadcast=broadcast))


def resumed_timer(limit_s: float, elapsed_s: float) -> Timer:
    """A Timer of a resumed run that has not restarted its clock: elapsed is fixed."""
    timer = Timer(duration=timedelta(seconds=limit_s))
    timer.load_state_dict({"time_elapsed": {"train": elapsed_s}})
    return timer


@pytest.mark.parametrize(("rank0_elapsed", "expected"), [(None, 50 + 75 * 50 / 25),
                                                          (20.0, 50 + 80 * 50 / 20)])
def test_timed_schedule_callback_replans_on_rank0s_clock(rank0_elapsed, expected):
    _, schedule = timed()
    schedule.replan_every = 25
    timer = resumed_timer(100.0, 25.0)
    callback = TimedSchedule()
    callback.on_train_batch_end(fake_trainer(schedule, timer, 49, rank0_elapsed),
                                None, None, None, 0)
    assert schedule.total_steps == float("inf")  # not a replanning step
    callback.on_train_batch_end(fake_trainer(schedule, timer, 50, rank0_elapsed),
                                None, None, None, 0)
    assert schedule.total_steps == pytest.approx(expected)


def test_timed_cosine_needs_a_time_limit():
    with pytest.raises(ConfigError, match=r"set trainer\.max_time"):
        check_optim({**ADAM, "scheduler": TIMED}, time_limit=False)
    check_optim({**ADAM, "scheduler": TIMED}, time_limit=True)
    _, schedule = timed()
    no_limit = fake_trainer(schedule, Timer(duration=None), 0, None)
    with pytest.raises(ConfigError, match=r"set trainer\.max_time"):
        TimedSchedule().on_train_start(no_limit, None)
