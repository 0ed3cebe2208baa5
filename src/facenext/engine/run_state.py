"""A run's record on disk, kept apart from the loop that trains it (as timm keeps ``CheckpointSaver`` apart from its
train loop): what a checkpoint holds, resuming from the latest one, ``recovery.pt`` inside long epochs and, at each
epoch's end, ``best.pt``, the top-k epochs kept for ``facenext average``, ``metrics.csv`` and ``last.pt``.

The dev score a run is ranked by is stored as ``best_score`` (a checkpoint) and ``dev_score`` (a top-k epoch);
checkpoints written before these names hold it as ``best_acc`` and ``dev_acc``, and are read under those too.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, SettingChange, config_changes, config_from_dict
from ..device import describe_device, precision_name
from ..errors import UserError
from ..losses import resolve_config
from ..models import embedding_size
from .distributed import all_gather, all_sum
from .meters import StepMeter
from .schedule import build_scheduler
from .seeding import seed_everything
from .skips import skip_counts

if TYPE_CHECKING:
    from .train import Trainer

logger = logging.getLogger(__name__)

# The first eight columns are the documented contract; later ones are additions.
METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "lr", "images_per_s", "epoch_s",
    "ema_dev_acc", "skipped_steps", "dev_eer", "dev_score", "non_finite_loss_steps", "overflow_steps", "loss_scale",
]  # fmt: skip
# How an optimizer computes its step, not what: chosen for the device at hand, never taken from a checkpoint.
OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def best_score(state: dict[str, Any]) -> float:
    """A checkpoint's best dev score; ``best_acc`` in checkpoints written before it was named for what it holds."""
    return state["best_score"] if "best_score" in state else state["best_acc"]


def epoch_score(checkpoint: dict[str, Any]) -> float:
    """A top-k epoch checkpoint's dev score; ``dev_acc`` in checkpoints written before it was named so."""
    return checkpoint["dev_score"] if "dev_score" in checkpoint else checkpoint["dev_acc"]


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators (CUDA: only the training device's), as ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore ``rng_state``'s output. Tensors go back to the CPU first: torch only accepts a CPU ByteTensor, and a
    checkpoint loaded with a GPU ``map_location`` would hand over CUDA tensors."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # written before 0.2: every visible GPU's state, by index
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


def run_environment(device: torch.device, dtype: torch.dtype | None, world: int) -> dict[str, Any]:
    """What a checkpoint was written with, so that a resume elsewhere can say what changed."""
    import timm

    from .. import __version__

    return {
        "device": describe_device(device),
        "precision": precision_name(dtype),
        "processes": world,
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "timm": timm.__version__,
        "facenext": __version__,
    }


def environment_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    if not saved:
        return []
    return [f"{key} {saved[key]} -> {value}" for key, value in current.items() if saved.get(key, value) != value]


def with_implementation(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved`` (an optimizer state dict) with ``optimizer``'s implementation flags in each group. A run trained with
    the non-fused AdamW (MPS, older torch) would otherwise turn this one non-fused while the GradScaler, which sees a
    fused optimizer, passes it ``grad_scale``: AdamW asserts. Loading through the fused flags also moves the step
    counts where the fused kernel wants them (float32 on the parameters' device)."""
    ours = optimizer.state_dict()["param_groups"]
    groups = [
        {**group, **{k: own[k] for k in OPTIMIZER_IMPLEMENTATION if k in own}}
        for group, own in zip(saved["param_groups"], ours, strict=False)
    ]
    return {**saved, "param_groups": groups}


def all_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


def latest_checkpoint(run_dir: Path, peek: bool = False) -> dict[str, Any] | None:
    """The most advanced readable checkpoint; a damaged one is reported and the next one used. ``peek``: tensors
    are memory-mapped, not read, and nothing is reported (a resume reads and reports)."""
    states = []
    for name in ("recovery.pt", "last.pt", "last.pt.prev"):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            # Always to the CPU: RNG states must come back there, and load_state_dict moves the rest.
            states.append(load_checkpoint(path, "cpu", mmap=peek))
        except UserError as e:
            if not peek:
                logger.warning(f"warning: skipping {path}: {e}")
    return max(states, key=lambda s: (s["epoch"], s["batch"]), default=None)


def recorded_augment_device(config: Config, run_dir: Path) -> str | None:
    """Where the run being resumed augments (its config records the choice); None for a new run, for a run from
    before the choice was recorded, and when data.augment_device is not auto."""
    if config.data.augment_device != "auto":
        return None
    state = latest_checkpoint(run_dir, peek=True)
    return ((state or {}).get("config") or {}).get("data", {}).get("augment_device")


class RunState:
    """What a run has reached beyond its weights (the best dev score and where it came from, each epoch's metrics,
    the top-k epochs) and the checkpoints that carry it with the trainer's state. The trainer's parts are read when
    a checkpoint is written or restored, so a part swapped after construction (a scaler in the GPU check) is the one
    saved and restored."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.run_dir, self.run = trainer, trainer.run_dir, trainer.run
        # The best dev score in the term's own metric (facenext.scoring): accuracy for F23-style terms, 1 - EER for
        # pair terms, the combined score for F26; "raw" or "ema", the weights that reached it.
        self.best_score, self.best_source = -1.0, ""
        self.history: list[dict[str, Any]] = []  # metrics.csv's rows
        self.top: list[tuple[float, int, str]] = []  # (score, epoch, file name) of the epochs kept in top/, best first
        self.last_recovery = time.monotonic()
        self.schedule_epochs = trainer.config.train.epochs  # the length trainer.scheduler was built for
        self.replan_on_start = False  # a resume with another budget or cap re-plans before its first epoch

    def state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resume needs; ``rng`` holds every process's generators (``gather_rng``)."""
        tr = self.trainer
        return {
            "model": tr.model.state_dict(),
            "ema": tr.ema.module.state_dict() if tr.ema else None,
            "optimizer": tr.optimizer.state_dict(),
            "scaler": tr.scaler.state_dict(),
            "scheduler": tr.scheduler.state_dict(),
            "budget": tr.budget.state_dict(),
            "epoch": tr.epoch,
            "batch": tr.batch_in_epoch,
            "step": tr.step,
            "epoch_stats": list(tr.epoch_stats),
            "skipped": tr.skipped,
            "bad_run": tr.bad_steps,
            "best_score": self.best_score,
            "best_source": self.best_source,
            "history": self.history,
            "top": self.top,
            "rng": rng,
            "environment": tr.environment,
            "config": tr.config.to_dict(),
            "classes": tr.data.classes,
        }

    def gather_rng(self) -> list[dict[str, Any]]:
        """Every process's generators, in rank order; every process must call it."""
        return all_gather(rng_state(self.trainer.device), self.trainer.ctx)

    # --- resume ---------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from the run folder's latest checkpoint; refuse one that belongs to another config."""
        tr = self.trainer
        state = latest_checkpoint(self.run_dir)
        if state is None:
            if (self.run_dir / "last.pt").exists():
                raise UserError(f"no readable checkpoint in {self.run_dir}: delete the folder to start again")
            return False
        settings = self._config_changes(state)
        if state["classes"] != tr.data.classes:
            raise UserError(f"{self.run_dir} was trained on other identities than {tr.data.layout.train}")
        tr.model.load_state_dict(state["model"])
        if tr.ema is not None:
            tr.ema.module.load_state_dict(state["ema"])
        tr.optimizer.load_state_dict(with_implementation(state["optimizer"], tr.optimizer))
        # A scale belongs to its precision (a bf16 run's is 1); runs before 0.2 saved an empty one for bf16/fp32.
        saved_precision = (state.get("environment") or {}).get("precision")
        if state["scaler"] and saved_precision in (None, tr.environment["precision"]):
            tr.scaler.load_state_dict(state["scaler"])
        tr.epoch, tr.batch_in_epoch, tr.step = state["epoch"], state["batch"], state["step"]
        self._restore_plan(state)
        tr.epoch_stats, tr.skipped = list(state["epoch_stats"]), skip_counts(state["skipped"])
        tr.bad_steps = state.get("bad_run", 0)
        tr.meter = StepMeter(tr.device, tr.bad_steps)
        self.best_score, self.best_source = best_score(state), state["best_source"]
        self.history, self.top = list(state["history"]), [tuple(x) for x in state["top"]]
        self._restore_rng(state["rng"])
        changes = environment_changes(state.get("environment"), tr.environment) + [str(c) for c in settings]
        if changes and tr.ctx.is_main:
            logger.info(f"resuming with changes since the checkpoint: {', '.join(changes)}")
        return True

    def _config_changes(self, state: dict[str, Any]) -> list[SettingChange]:
        """The settings changed since ``state`` was written; refuses the resume when one changes the result."""
        tr = self.trainer
        # Through today's defaults: a key added since the checkpoint was written is not a different config.
        try:
            saved_config = config_from_dict(state["config"])
            # Runs written before the margin defaults recorded values that do nothing (a linear classifier's scale).
            saved = resolve_config(saved_config, len(tr.data.classes), embedding_size(saved_config), strict=False)
            saved = saved.to_dict()
        except UserError:
            saved = state["config"]  # a key that no longer exists: certainly another config
        if saved.get("data", {}).get("augment_device") == "auto":  # written before the choice was recorded
            saved = {**saved, "data": {**saved["data"], "augment_device": tr.config.data.augment_device}}
        # Settings that change the result refuse the resume; operational ones (where the data is, workers, device,
        # time limit, the planned length, ...) may change, and are printed by resume().
        settings = config_changes(saved, tr.config.to_dict())
        different = [change.key for change in settings if not change.operational]
        if different:
            raise UserError(
                f"{self.run_dir} holds a run with a different config ({', '.join(different)}): pass "
                f"--out <new folder> or delete {self.run_dir}"
            )
        return settings

    def _restore_plan(self, state: dict[str, Any]) -> None:
        """The budget's time spent and plan, and the schedule for that plan. The saved scheduler is restored only when
        built for the same length and cap; otherwise (an extended run, another plan) it is built for the new one."""
        tr = self.trainer
        saved_cap = state["config"]["train"]["epochs"]
        saved_plan = (state.get("budget") or {}).get("planned", saved_cap)
        budget_changed = tr.budget.load_state_dict(state.get("budget") or {}, at_epoch_start=state["batch"] == 0)
        self.replan_on_start = budget_changed or saved_cap != tr.config.train.epochs
        self._schedule_for(tr.budget.planned)
        if "scheduler" in state and (saved_cap, saved_plan) == (tr.config.train.epochs, tr.budget.planned):
            tr.scheduler.load_state_dict(state["scheduler"])

    def _restore_rng(self, saved: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Each process continues its own generators; with more processes than were saved the new ones are seeded
        afresh (the run then continues correctly, only not bit for bit)."""
        tr = self.trainer
        states = saved if isinstance(saved, list) else [saved]
        if tr.ctx.rank < len(states):
            set_rng_state(states[tr.ctx.rank], tr.device)
        else:
            t = tr.config.train
            seed_everything(t.seed + tr.ctx.rank + 1_000_003 * tr.step, t.deterministic)

    # --- the budget's plan ------------------------------------------------------------------------------------------
    def plan(self, change_from: str, train_s: float | None = None) -> None:
        """Re-plan (``change_from``: "epoch" at an epoch end, "resume" before a resumed run's first epoch), agree on
        the plan across processes, and follow it with the schedule."""
        tr, budget = self.trainer, self.trainer.budget
        change = budget.end_epoch(tr.epoch) if change_from == "epoch" else budget.replan(tr.epoch, extend=True)
        if tr.ctx.enabled:  # each process times itself: rank 0's plan is the one all follow
            planned = all_sum([float(budget.planned if tr.ctx.is_main else 0)], tr.ctx, tr.device)[0]
            budget.planned = round(planned)
        if change is not None and tr.ctx.is_main:
            logger.info(budget.describe(change, train_s))
        self._schedule_for(budget.planned)

    def _schedule_for(self, epochs: int) -> None:
        """Rebuild the LR schedule for ``epochs``, continuing at the current step: the LR moves to the new length's
        curve, the only jump a new plan implies (none during warm-up, which keeps its length)."""
        if epochs == self.schedule_epochs:
            return
        tr = self.trainer
        tr.scheduler = build_scheduler(tr.optimizer, tr.config, tr.steps_per_epoch, epochs)
        tr.scheduler.step_update(tr.step)
        self.schedule_epochs = epochs

    # --- saving ---------------------------------------------------------------------------------------------------
    def recovery_due(self) -> bool:
        minutes = self.trainer.config.train.recovery_minutes
        return bool(minutes) and time.monotonic() - self.last_recovery > minutes * 60

    def save_recovery(self) -> None:
        """``recovery.pt``, mid-epoch; the epoch's statistics must have been read from the device first."""
        rng = self.gather_rng()
        if self.trainer.ctx.is_main:
            save_checkpoint(self.run_dir / "recovery.pt", self.state(rng))
        self.last_recovery = time.monotonic()

    def save_epoch(self, score: float, ema_score: float, rng: list[dict[str, Any]]) -> None:
        """Best and top-k first, ``last.pt`` last: a crash in between repeats the epoch, which changes nothing."""
        tr = self.trainer
        use_ema = tr.ema is not None and ema_score > score
        score, source = (ema_score, "ema") if use_ema else (score, "raw")
        finite = all_finite(tr.ema.module if use_ema else tr.model)
        # Without a dev split there is nothing to rank by: the latest epoch is the best one.
        best = self.run.weights_file("best")
        improved = finite and (score > self.best_score or math.isnan(score) or not best.exists())
        if improved:
            self.best_score, self.best_source = score, source
        keep = finite and tr.config.train.keep_top_k > 0 and not math.isnan(score)
        dropped = self._rank_top_k(score) if keep else []
        state = self.state(rng)
        weights = state["ema"] if use_ema else state["model"]
        if improved:
            save_checkpoint(best, {**state, "model": weights, "best_source": source})
        if keep and any(name == self._top_name() for _, _, name in self.top):
            meta = {"epoch": tr.epoch, "dev_score": score, "config": state["config"], "classes": state["classes"]}
            save_checkpoint(self.run_dir / "top" / self._top_name(), {"model": weights, **meta})
        for name in dropped:
            (self.run_dir / "top" / name).unlink(missing_ok=True)
        self.run.write_metrics(self.history, METRIC_COLUMNS)
        save_checkpoint(self.run_dir / "last.pt", state, keep_previous=True)
        (self.run_dir / "recovery.pt").unlink(missing_ok=True)

    def _top_name(self) -> str:
        return f"epoch_{self.trainer.epoch:04d}.pt"

    def _rank_top_k(self, score: float) -> list[str]:
        """Add this epoch to the k best kept for checkpoint averaging; return the names that fell out."""
        ranked = sorted([*self.top, (score, self.trainer.epoch, self._top_name())], key=lambda x: (-x[0], -x[1]))
        k = self.trainer.config.train.keep_top_k
        self.top = ranked[:k]
        return [name for _, _, name in ranked[k:]]

    def last_good(self) -> str:
        """What an error that stops the run adds: where the last good epoch is, when there is one."""
        last = self.run_dir / "last.pt"
        return f"; {last} holds the last good epoch" if last.exists() else ""
