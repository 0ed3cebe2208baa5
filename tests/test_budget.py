"""`train.budget`: the planner on a fake clock, the schedule it rebuilds, and real budgeted runs (one resumed)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from facenext.checkpoint import load_checkpoint
from facenext.config import budget_seconds, config_from_dict
from facenext.engine.budget import BudgetPlanner
from facenext.engine.schedule import build_scheduler

from .conftest import CONFIG, assert_user_error, facenext, train_args


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planner_after(epoch_seconds, budget_s=100.0, cap=1000):
    """A planner on a fake clock that has timed epochs of ``epoch_seconds``; also its clock and the changes."""
    clock = FakeClock()
    planner = BudgetPlanner(budget_s, cap, clock)
    planner.start()
    changes = []
    for done, seconds in enumerate(epoch_seconds, 1):
        clock.now += seconds
        changes.append(planner.end_epoch(done))
    return planner, clock, changes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("11h", 39600), ("90m", 5400), ("5min", 300), ("1.5h", 5400), ("300s", 300), ("2 hours", 7200), (1.5, 5400)],
)
def test_budget_values(value, seconds):
    assert budget_seconds(value) == seconds
    assert budget_seconds(config_from_dict({}, [f"train.budget={value}"]).train.budget) == seconds


def test_the_first_epoch_sets_the_plan():
    planner, _, [change] = planner_after([10.0])
    # 100 s less the margin (3 s of the budget, a quarter epoch) leaves 84.5 s after the first epoch: 8 more.
    assert planner.planned == 9 and change.first and change.finish_s == 90
    line = planner.describe(change, train_s=8.0)
    assert line == "budget 100 s: first epoch 10.0 s (train 8.0, eval 2.0) -> 9 epochs, ending at ~90 s"


def test_slower_epochs_shrink_the_plan_and_faster_ones_grow_it_with_room_to_spare():
    planner, _, changes = planner_after([10.0, 10.0, 20.0])
    # The first epoch is set apart: mean 15 s from 40 s, where the plan of 9 would end at 133.75 s; (100 - 3 - 3.75
    # - 40) / 15 = 3.55 more: 6.
    assert planner.planned == 6 and (changes[2].previous, changes[2].epochs) == (9, 6)
    line = planner.describe(changes[2])
    assert "epochs take 15.0 s (mean of the last 2; each session's first set apart) -> 6 epochs (was 9)" in line
    planner, _, changes = planner_after([10.0, 9.0, 9.0])
    # 9 s from 28 s: 7 more would fit (10 in all), but growing needs an epoch to spare besides the margin ...
    assert changes[1:] == [None, None] and planner.planned == 9
    planner, _, changes = planner_after([10.0, 7.0, 7.0])
    # ... which there is at 7 s from 17 s: (100 - 3 - 1.75 - 17) / 7 = 11.2 more (13 in all; 12 with a spare).
    assert changes[1].epochs == 13 and changes[2] is None


def test_the_first_epoch_is_set_apart_and_a_reached_plan_still_grows():
    """torch.compile, cuDNN autotuning and worker start-up make a first epoch many times longer than the next: its
    plan is short, and can end before another epoch is timed. The next epochs are timed without it, and the plan
    grows, even once reached (the LR then follows the longer curve from where it is)."""
    planner, _, changes = planner_after([45.0, 5.0])
    # From the first epoch alone: 2 epochs (one more at least). Then 5 s from 50 s: (100 - 3 - 1.25 - 50) / 5.
    assert changes[0].epochs == 2 and (changes[1].previous, changes[1].epochs) == (2, 11)
    assert planner.epoch_estimate() == 5.0 and planner.steady_epochs() == [5.0]
    # Set apart in the estimate, but spent: the plan ends inside the budget.
    assert changes[1].finish_s == 50 + 9 * 5 <= 100


# Scenarios from 5 minutes to 12 hours (budget, steady epoch, first-epoch extra; seconds): CPU runs of a few seconds an
# epoch, GPU runs with torch.compile (1-4 min) or a slow worker start, the 10-minute run, a 12-hour Kaggle run.
SCENARIOS = [
    (300, 2, 0), (300, 2, 90), (300, 6, 60), (300, 10, 120), (600, 10, 0), (600, 10, 250), (600, 5, 200),
    (1800, 30, 90), (3600, 60, 120), (3600, 20, 600), (4 * 3600, 300, 180), (12 * 3600, 600, 180),
    (12 * 3600, 300, 14000),
]  # fmt: skip


@pytest.mark.parametrize(("budget", "epoch", "extra"), SCENARIOS)
def test_budgets_from_5_minutes_to_12_hours_are_used_and_never_overrun(budget, epoch, extra):
    """Epochs +- 8% (and drifting 30% slower over the run, or a third faster), the first one longer by ``extra``:
    at least 90% of the budget is used, never more than all of it."""
    for seed, drift in enumerate([0.0, 0.3, -0.3]):
        rng = np.random.default_rng(seed)
        clock = FakeClock()
        planner = BudgetPlanner(float(budget), 100_000, clock)
        planner.start()
        done = 0
        while done < planner.planned:
            steady = epoch * (1 + drift * planner.spent() / budget) * (1 + 0.08 * rng.standard_normal())
            clock.now += steady + (extra if done == 0 else 0)
            done += 1
            planner.end_epoch(done)
        assert 0.9 * budget <= planner.spent() <= budget, (seed, drift, done, planner.spent() / budget)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_epoch_times_keep_the_plan_steady_and_inside_the_budget(seed):
    """Epochs of 2 s +- 8% (a 2-core CPU) in a 5-minute budget: the run ends inside it, using most of it, and the
    plan (and with it the LR curve) changes a few times while the running mean settles, not at every epoch."""
    rng = np.random.default_rng(seed)
    clock = FakeClock()
    planner = BudgetPlanner(300.0, 1000, clock)
    planner.start()
    done, changes = 0, 0
    while done < planner.planned:
        clock.now += 2.5 if done == 0 else 2.0 * (1 + 0.08 * rng.standard_normal())
        done += 1
        changes += planner.end_epoch(done) is not None
    assert 0.9 * 300 < planner.spent() <= 300
    assert changes <= 20 < done / 5


def test_the_plan_is_capped_by_epochs_and_never_below_one_more_epoch():
    planner, _, [change] = planner_after([10.0], budget_s=1000.0, cap=5)
    assert planner.planned == 5 and change.capped and "train.epochs caps it" in planner.describe(change)
    planner, _, changes = planner_after([200.0, 300.0])  # the budget was spent by the first epoch
    assert changes[0].epochs == 2 and changes[1] is None and planner.planned == 2
    # A finished plan stays finished, its LR at min_lr, though a fast last epoch left room for one more (growing
    # needs a spare epoch); a resume with another budget or cap extends it.
    planner, _, changes = planner_after([10.0] * 8 + [1.0])
    assert planner.planned == 9 and changes[-1] is None
    assert planner.replan(9, extend=True).epochs == 10
    # At the cap nothing more is planned, though the budget has room.
    planner, _, changes = planner_after([10.0, 10.0], budget_s=1000.0, cap=2)
    assert changes == [planner_after([10.0], budget_s=1000.0, cap=2)[2][0], None] and planner.planned == 2


def test_spent_time_and_plan_carry_over_a_resume():
    planner, clock, _ = planner_after([10.0, 10.0])
    clock.now += 4.0  # into the third epoch: a recovery file
    saved = planner.state_dict()
    assert saved["spent_s"] == 24.0 and saved["epoch_start_s"] == 20.0

    later = FakeClock()
    resumed = BudgetPlanner(100.0, 1000, later)
    assert resumed.load_state_dict(saved, at_epoch_start=False) is False  # same budget
    assert (resumed.spent(), resumed.planned) == (24.0, planner.planned)
    resumed.start()
    later.now += 6.0
    resumed.end_epoch(3)
    assert resumed.epoch_seconds == [10.0, 10.0, 10.0] and resumed.spent() == 30.0

    bigger = BudgetPlanner(200.0, 1000, FakeClock())
    assert bigger.load_state_dict(planner.state_dict(), at_epoch_start=True) is True
    change = bigger.replan(2, extend=True)  # (200 - 6 - 2.5 - 24) / 10 = 16.75 more
    assert change.epochs == 18 and bigger.planned == 18


def test_a_resumed_sessions_first_epoch_is_set_apart_too():
    planner, _, _ = planner_after([10.0] * 5, budget_s=1000.0)
    saved = planner.state_dict()
    assert saved["session_firsts"] == [0]
    later = FakeClock()
    resumed = BudgetPlanner(1000.0, 1000, later)
    resumed.load_state_dict(saved, at_epoch_start=True)
    resumed.start()
    later.now += 40.0  # the new session's start-up: workers, autotuning, compiling again
    change = resumed.end_epoch(6)
    # Still 10 s an epoch (a mean over the first would say 15 s and plan 64); the 30 s lost are spent: 90 s from
    # 90 s, (1000 - 30 - 2.5 - 90) / 10 = 87.75 more.
    assert resumed.session_firsts == [0, 5] and resumed.epoch_estimate() == 10.0
    assert change.epochs == 93
    # A checkpoint from before session_firsts was kept: its first epoch is the one set apart.
    old = {k: v for k, v in saved.items() if k != "session_firsts"}
    assert BudgetPlanner(1000.0, 1000).load_state_dict(old, True) is False
    again = BudgetPlanner(1000.0, 1000)
    again.load_state_dict(old, True)
    assert again.session_firsts == [0]


def optimizer():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def lr_at(scheduler, step):
    scheduler.step_update(step)
    return scheduler.optimizer.param_groups[0]["lr"]


def test_a_rebuilt_cosine_follows_the_new_length_and_ends_at_min_lr():
    config = config_from_dict({"train": {"epochs": 10, "lr": 0.1, "min_lr": 1e-4, "warmup_epochs": 1}})
    steps = 7
    opt = optimizer()
    planned = build_scheduler(opt, config, steps)
    assert lr_at(planned, 3) == lr_at(build_scheduler(optimizer(), config, steps, epochs=4), 3)  # warm-up: no jump
    assert lr_at(planned, 10 * steps) == 1e-4
    reference = build_scheduler(optimizer(), config, steps, epochs=6)
    before = lr_at(planned, 3 * steps)
    replanned = build_scheduler(opt, config, steps, epochs=6)
    after = lr_at(replanned, 3 * steps)
    # The LR moves to the 6-epoch curve at step 21, a jump of exactly the difference of the two curves there.
    assert after == lr_at(reference, 3 * steps) < before
    assert [lr_at(replanned, s) for s in range(3 * steps, 6 * steps + 1)] == [
        lr_at(reference, s) for s in range(3 * steps, 6 * steps + 1)
    ]
    assert lr_at(replanned, 6 * steps) == 1e-4


def test_multistep_milestones_scale_with_the_plan():
    train = {"epochs": 40, "schedule": "multistep", "milestones": [10, 20], "gamma": 0.5, "warmup_epochs": 0}
    config = config_from_dict({"train": train})
    half = build_scheduler(optimizer(), config, 4, epochs=20)  # milestones at epochs 5 and 10
    assert [lr_at(half, e * 4) for e in (4, 5, 9, 10)] == [0.1, 0.05, 0.05, 0.025]


@pytest.fixture
def one_thread():
    """Steadier epoch times on two cores shared with other work: less contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_budgeted_run_completes_its_schedule_inside_the_budget(sample, tmp_path, one_thread):
    run = tmp_path / "run"
    result = facenext(*train_args(sample, run, "train.epochs=1000", "train.budget=8s", "train.plot=false"))
    assert result.returncode == 0, result.stderr
    assert "budget 8.0 s: first epoch" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    budget = summary["budget"]
    assert summary["complete"] and summary["epochs"] == budget["planned_epochs"] < 1000
    # The plan is checked at every epoch end, so only the last epoch can run late (slower than the recent mean):
    # one epoch is the tolerance. Half the budget unused would mean a plan far too cautious.
    last_epoch = budget["measured_epoch_s"][-1]
    assert 4.0 < budget["spent_s"] <= 8.0 + last_epoch
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == summary["epochs"] and metrics["lr"].iloc[-1] == pytest.approx(1e-6)
    # Each epoch's checkpoint holds its own measurement and the plan made from it, and the schedule for that plan: a
    # resume from it forgets neither.
    for name in ("last.pt", "last.pt.prev"):
        state = load_checkpoint(run / name)
        saved = state["budget"]
        assert len(saved["epoch_seconds"]) == state["epoch"] and saved["made"], name
        assert saved["spent_s"] >= sum(saved["epoch_seconds"])
        steps = state["step"] // state["epoch"]  # per epoch; the cosine's length excludes a 1-epoch warm-up
        assert state["scheduler"]["t_initial"] == (saved["planned"] - 1) * steps, name


def test_a_resumed_budgeted_run_keeps_the_time_spent(sample, tmp_path, one_thread):
    run = tmp_path / "run"
    # Sessions of at most 3.6 s (the time limit) for a 20 s budget: later sessions finish what the first started.
    # The budget is several times the limit because the first epoch (planned from alone) can take ten times the
    # later ones on a loaded machine: with a budget near the limit its plan would end before the limit stops it.
    # train.epochs is far above what fits: on an idle machine (0.15 s epochs) 100 epochs fit in 20 s, and a plan
    # capped by train.epochs would not show that the budget set it.
    args = train_args(sample, run, "train.epochs=1000", "train.budget=20s", "train.time_limit=0.001")
    args.append("train.plot=false")
    first = facenext(*args)
    assert first.returncode == 0 and "stopped (time limit)" in first.stdout, first.stdout + first.stderr
    state = load_checkpoint(run / "recovery.pt")["budget"]
    assert 3.6 <= state["spent_s"] < 20 and state["made"] and state["planned"] < 1000

    second = facenext(*args)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and f"{state['spent_s']:.1f} s spent" in second.stdout
    for _ in range(6):  # each session stops at the time limit: the rest of the budget takes a few
        if json.loads((run / "summary.json").read_text())["complete"]:
            break
        assert facenext(*args).returncode == 0
    summary = json.loads((run / "summary.json").read_text())
    budget = summary["budget"]
    assert summary["complete"] and summary["epochs"] == budget["planned_epochs"]
    # More than one session's time limit: the first session's time was counted.
    assert 3.6 + 0.5 < budget["spent_s"] <= 20.0 + budget["measured_epoch_s"][-1]
    assert pd.read_csv(run / "metrics.csv")["lr"].iloc[-1] == pytest.approx(1e-6)


@pytest.mark.parametrize("value", ["5 lightyears", "-3h", "0m", "h", "true"])
def test_a_bad_budget_is_one_line_and_exit_2(value, tmp_path):
    result = facenext("train", CONFIG, "--out", tmp_path / "run", f"train.budget={value}")
    assert_user_error(result, "train.budget")
    assert not (tmp_path / "run").exists()
