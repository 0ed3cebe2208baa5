"""Plan a run's length from a time budget (``train.budget``): after each epoch, the most epochs that end inside it.

The planner only counts seconds and epochs. The Trainer tells it when an epoch has ended (evaluation included; the
checkpoint that follows falls into the next epoch's time), rebuilds the LR schedule for the planned length, and keeps
``state_dict()`` in every checkpoint, so that a resumed run goes on counting the time already spent.

The first epoch of each session carries one-off costs (worker start-up, cuDNN autotuning, torch.compile) that can
be several later epochs long: it counts in the time spent, but the epoch time is estimated from the other epochs as
soon as there are any, and a plan grows, even one already reached, when they show that more epochs fit.
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
# Epochs in the running mean: enough to damp noise, few enough that real drift leaves it soon. The first epoch of a
# session, with its one-off costs, is left out of it once other epochs are measured.
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
        self.epoch_seconds: list[float] = []  # every measured epoch, start to end (evaluation included)
        self.session_firsts: list[int] = []  # indices in epoch_seconds of each session's first measured epoch
        self.spent_before = 0.0  # budget seconds of earlier sessions
        self.started: float | None = None
        self.epoch_start = 0.0  # budget seconds when the current epoch began
        self.fresh_session = True  # the next epoch to end is this session's first

    def start(self) -> None:
        self.started = self.clock()
        self.fresh_session = True

    def spent(self) -> float:
        return self.spent_before + (self.clock() - self.started if self.started is not None else 0.0)

    def steady_epochs(self) -> list[float]:
        """The measured epochs without each session's first, or all of them while there are no others."""
        firsts = set(self.session_firsts)
        steady = [s for i, s in enumerate(self.epoch_seconds) if i not in firsts]
        return steady or self.epoch_seconds

    def epoch_estimate(self) -> float | None:
        recent = self.steady_epochs()[-WINDOW:]
        return sum(recent) / len(recent) if recent else None

    def end_epoch(self, done: int) -> PlanChange | None:
        """Record the epoch that just ended (``done`` epochs in all now) and re-plan; returns the change, if any."""
        now = self.spent()
        if self.fresh_session:
            self.session_firsts.append(len(self.epoch_seconds))
            self.fresh_session = False
        self.epoch_seconds.append(now - self.epoch_start)
        self.epoch_start = now
        return self.replan(done)

    def replan(self, done: int, extend: bool = False) -> PlanChange | None:
        """Plan from the measured epochs. The first plan, and ``extend`` (a resume with another budget or cap, which
        may lengthen a finished run as train.epochs does), take the most epochs that fit, one more at least. Later a
        plan grows when a whole epoch (or GROW_BAND of the budget) more would fit besides the margin, also once
        reached: its LR then follows the longer curve from where it is. It shrinks, never below ``done + 1`` and
        never once reached, when its end is expected past SHRINK_AT of the budget."""
        per_epoch = self.epoch_estimate()
        if self.budget_s is None or per_epoch is None or (done >= self.cap and not extend):
            return None
        if extend or not self.made:
            epochs = min(self.cap, max(done + 1, self._fit(done, per_epoch, 0.0)))
        else:
            epochs = self.planned
            slack = max(GROW_SLACK, GROW_BAND * self.budget_s / per_epoch)
            grown = self._fit(done, per_epoch, slack)
            if grown > self.planned:
                epochs = self._fit(done, per_epoch, 0.0)
            elif done < self.planned and not self._ends_by(done, per_epoch, SHRINK_AT * self.budget_s):
                epochs = max(done + 1, min(self.planned, self._fit(done, per_epoch, 0.0)))
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
        """Epochs whose end is expected inside the budget less the margin and ``slack`` epochs, counting the current
        epoch from its start (``done`` when none more fits), never more than ``cap``."""
        margin = MARGIN_OF_BUDGET * self.budget_s + (MARGIN_OF_EPOCH + slack) * per_epoch
        more = math.floor((self.budget_s - margin - self.epoch_start) / per_epoch)
        return min(self.cap if cap is None else cap, done + max(0, more))

    def describe(self, change: PlanChange, train_s: float | None = None) -> str:
        """One line for the log; ``train_s``, the training part of the first epoch, splits the first plan's time."""
        head = f"budget {duration_text(self.budget_s)}: "
        if change.first and train_s is not None and len(self.epoch_seconds) == 1:
            rest = change.epoch_s - train_s
            head += f"first epoch {change.epoch_s:.1f} s (train {train_s:.1f}, eval {rest:.1f})"
        else:
            steady = len(self.steady_epochs())
            apart = "; each session's first set apart" if steady < len(self.epoch_seconds) else ""
            head += f"epochs take {change.epoch_s:.1f} s (mean of the last {min(WINDOW, steady)}{apart})"
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
            "session_firsts": list(self.session_firsts),
            "spent_s": self.spent(),
            "epoch_start_s": self.epoch_start,
        }

    def load_state_dict(self, state: dict[str, Any], at_epoch_start: bool) -> bool:
        """Continue a saved run (``state`` empty for a checkpoint from before budgets). ``at_epoch_start``: saved at an
        epoch end, so that the next epoch starts now. Returns whether the budget differs from the saved one."""
        self.spent_before = float(state.get("spent_s", 0.0))
        self.epoch_seconds = [float(s) for s in state.get("epoch_seconds", [])]
        # Checkpoints from before session_firsts was kept: the run's first epoch is the one known to carry start-up.
        self.session_firsts = [int(i) for i in state.get("session_firsts", [0][: len(self.epoch_seconds)])]
        self.epoch_start = self.spent_before if at_epoch_start else float(state.get("epoch_start_s", 0.0))
        self.made = bool(state.get("made", False)) and self.budget_s is not None
        self.planned = min(int(state.get("planned", self.cap)), self.cap) if self.made else self.cap
        return state.get("budget_s") != self.budget_s
