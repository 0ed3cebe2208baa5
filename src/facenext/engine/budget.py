"""Plan a run's length from a time budget (``train.budget``): after each epoch, the most epochs that end inside it.

The planner only counts seconds and epochs. The Trainer tells it when an epoch has ended (evaluation and checkpoints
included), rebuilds the LR schedule for the planned length, and keeps ``state_dict()`` in every checkpoint, so that
a resumed run goes on counting the time already spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]

# Kept free: a fraction of the budget for the epoch time's drift over what remains, and a share of one epoch for the
# last epoch's own noise (the plan is checked at every epoch end, so only the last one can overrun it unchecked).
MARGIN_OF_BUDGET = 0.03
MARGIN_OF_EPOCH = 0.25
# Epochs in the running mean: enough to damp noise, few enough that the first epoch's one-off costs (worker start,
# cudnn benchmark, compile) and real drift leave it soon.
WINDOW = 10
# A plan is kept while its projected end stays in a band below the budget, so that noise in the epoch time does not
# grow and shrink it (and bend the LR curve) every few epochs; on a 2-core CPU epoch times wander by 10%. It shrinks
# once its end passes SHRINK_AT of the budget (still inside it), and grows only with a whole epoch, or GROW_BAND of
# the budget if that is more, to spare besides the margin.
SHRINK_AT = 0.99
GROW_SLACK = 1.0
GROW_BAND = 0.03


@dataclass(frozen=True)
class PlanChange:
    epochs: int  # the new plan
    previous: int
    epoch_s: float  # the epoch time it was made with
    finish_s: float  # when the planned run should end, in budget seconds
    first: bool  # the first plan of the run
    capped: bool  # train.epochs is what limits it, not the budget


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class BudgetPlanner:
    """The time spent on a run, across resumes, and with a budget the number of epochs planned (``planned``).

    ``cap`` is ``train.epochs``: without a budget, or before the first epoch has been timed, the plan is the cap.
    Budget time runs while the clock is started (``start``): the training loop of each session, not its set-up.
    """

    def __init__(self, budget_s: float | None, cap: int, clock: Clock = time.monotonic) -> None:
        self.budget_s, self.cap, self.clock = budget_s, cap, clock
        self.planned = cap
        self.made = False  # whether a plan from measured epochs exists (its first change is always reported)
        self.epoch_seconds: list[float] = []  # every measured epoch, start to end (evaluation, checkpoints)
        self.spent_before = 0.0  # budget seconds of earlier sessions
        self.started: float | None = None
        self.epoch_start = 0.0  # budget seconds when the current epoch began

    def start(self) -> None:
        self.started = self.clock()

    def spent(self) -> float:
        return self.spent_before + (self.clock() - self.started if self.started is not None else 0.0)

    def epoch_estimate(self) -> float | None:
        recent = self.epoch_seconds[-WINDOW:]
        return sum(recent) / len(recent) if recent else None

    def end_epoch(self, done: int) -> PlanChange | None:
        """Record the epoch that just ended (``done`` epochs in all now) and re-plan; returns the change, if any."""
        now = self.spent()
        self.epoch_seconds.append(now - self.epoch_start)
        self.epoch_start = now
        return self.replan(done)

    def replan(self, done: int, extend: bool = False) -> PlanChange | None:
        """Plan from the measured epochs. A completed plan is left alone (its LR has reached the end) unless
        ``extend``: a resume with another budget or cap, which may lengthen a finished run as train.epochs does."""
        per_epoch = self.epoch_estimate()
        if self.budget_s is None or per_epoch is None or (done >= self.planned and not extend):
            return None
        epochs = self._fit(done, per_epoch, 0.0)
        if self.made and not extend:
            if epochs > self.planned:
                slack = max(GROW_SLACK, GROW_BAND * self.budget_s / per_epoch)
                epochs = max(self.planned, self._fit(done, per_epoch, slack))
            elif epochs < self.planned and self._ends_by(done, per_epoch, SHRINK_AT * self.budget_s):
                epochs = self.planned
        if epochs == self.planned and self.made:
            return None
        change = PlanChange(
            epochs=epochs,
            previous=self.planned,
            epoch_s=per_epoch,
            finish_s=self.epoch_start + (epochs - done) * per_epoch,
            first=not self.made,
            capped=epochs == self.cap and self._fit(done, per_epoch, 0.0, self.cap + 1) > self.cap,
        )
        self.planned, self.made = epochs, True
        return change

    def _ends_by(self, done: int, per_epoch: float, deadline: float) -> bool:
        """Whether the current plan's last epoch is expected to end by ``deadline`` (budget seconds), the last
        epoch's own noise (a share of an epoch) included."""
        return self.epoch_start + (self.planned - done + MARGIN_OF_EPOCH) * per_epoch <= deadline

    def _fit(self, done: int, per_epoch: float, slack: float, cap: int | None = None) -> int:
        """Epochs whose end is expected inside the budget, counting the current epoch from its start; never fewer
        than ``done + 1`` (the schedule needs an epoch to end in), never more than ``cap``."""
        margin = MARGIN_OF_BUDGET * self.budget_s + (MARGIN_OF_EPOCH + slack) * per_epoch
        more = math.floor((self.budget_s - margin - self.epoch_start) / per_epoch)
        return min(self.cap if cap is None else cap, max(done + 1, done + more))

    def describe(self, change: PlanChange, train_s: float | None = None) -> str:
        """One line for the log; ``train_s``, the training part of the first epoch, splits the first plan's time."""
        head = f"budget {duration_text(self.budget_s)}: "
        if change.first and train_s is not None and len(self.epoch_seconds) == 1:
            rest = change.epoch_s - train_s
            head += f"first epoch {change.epoch_s:.1f} s (train {train_s:.1f}, eval+checkpoint {rest:.1f})"
        else:
            head += f"epochs take {change.epoch_s:.1f} s (mean of the last {min(WINDOW, len(self.epoch_seconds))})"
        was = "" if change.first else f" (was {change.previous})"
        capped = " (train.epochs caps it: raise it to fill the budget)" if change.capped else ""
        return f"{head} -> {change.epochs} epochs{was}{capped}, ending at ~{duration_text(change.finish_s)}"

    def summary(self, complete: bool) -> dict[str, Any] | None:
        """What summary.json keeps of the plan (None without a budget)."""
        if self.budget_s is None:
            return None
        spent = self.spent()
        estimate = self.epoch_estimate()
        return {
            "budget_s": round(self.budget_s, 2),
            "planned_epochs": self.planned,
            "epoch_s": round(estimate, 3) if estimate is not None else None,
            "measured_epoch_s": [round(s, 3) for s in self.epoch_seconds],
            "spent_s": round(spent, 2),
            "completed_within_budget": complete and spent <= self.budget_s,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s,
            "planned": self.planned,
            "made": self.made,
            "epoch_seconds": list(self.epoch_seconds),
            "spent_s": self.spent(),
            "epoch_start_s": self.epoch_start,
        }

    def load_state_dict(self, state: dict[str, Any], at_epoch_start: bool) -> bool:
        """Continue a saved run (``state`` empty for a checkpoint from before budgets). ``at_epoch_start``: saved at an
        epoch end, so that the next epoch starts now. Returns whether the budget differs from the saved one."""
        self.spent_before = float(state.get("spent_s", 0.0))
        self.epoch_seconds = [float(s) for s in state.get("epoch_seconds", [])]
        self.epoch_start = self.spent_before if at_epoch_start else float(state.get("epoch_start_s", 0.0))
        self.made = bool(state.get("made", False)) and self.budget_s is not None
        self.planned = min(int(state.get("planned", self.cap)), self.cap) if self.made else self.cap
        return state.get("budget_s") != self.budget_s
