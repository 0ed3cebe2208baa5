"""The learning-rate schedule, stepped per optimizer step."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler

from ..config import Config
from ..errors import UserError


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int, epochs: int | None = None
) -> Scheduler:
    """Schedules stepped per optimizer step (``step_update``), so warm-up and decay are smooth at any epoch count.

    ``epochs`` is the length planned (``train.budget``'s plan; default ``train.epochs``): the cosine reaches min_lr
    at its last step, and multistep milestones, written for ``train.epochs``, scale in proportion. Warm-up keeps its
    length. Building again for another length at the same step gives that length's curve from there on."""
    t = config.train
    epochs = epochs or t.epochs
    warmup = int(t.warmup_epochs * steps_per_epoch)
    if t.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, epochs * steps_per_epoch - warmup),
            lr_min=t.min_lr,
            warmup_t=warmup,
            warmup_lr_init=t.min_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    if t.schedule == "multistep":
        # Milestone m takes effect at the first step of epoch m (0-based), warm-up included, as torch's MultiStepLR
        # stepped per epoch does. timm counts from the end of warm-up (warmup_prefix) and applies a decay at
        # t + 1 >= decay_t, hence the prefix off and the +1.
        return MultiStepLRScheduler(
            optimizer,
            decay_t=[round(m * steps_per_epoch * epochs / t.epochs) + 1 for m in t.milestones],
            decay_rate=t.gamma,
            warmup_t=warmup,
            warmup_lr_init=t.min_lr,
            warmup_prefix=False,
            t_in_epochs=False,
        )
    raise UserError(f"unknown schedule {t.schedule!r} (train.schedule): use cosine or multistep")
