"""A skipped optimizer step leaves the run as it was: the loss scale, BatchNorm's running statistics and the EMA.

Every decision here is taken on the device from 0-dim flags, so that a training step never waits for the GPU:

- a non-finite loss is never applied, inf included (``poisoned``);
- torch's GradScaler takes a non-finite loss for an fp16 overflow and halves the scale, which only doubles back
  after 2,000 clean steps: a NaN every other step takes it from 65,536 to 6e-8 in 80 steps, where the gradients of
  finite steps underflow to zero. ``LossScaler`` keeps the scale and its growth tracker as they were after a
  non-finite loss; a finite loss whose gradients overflow still lowers the scale, as designed;
- BatchNorm updates its running statistics in the forward pass, before the loss is known: one non-finite batch
  makes them NaN for good, and every later evaluation with them (``RunningStats`` puts them back);
- the EMA follows the model at every step, buffers included (``update_ema`` leaves it alone on a skip).
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


def poisoned(loss: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """``loss``, whose gradients are all NaN when it is not finite (``finite`` False), so that the scaler skips the
    step: an inf loss can have finite gradients (an overflowed logit of another class) and would be applied."""
    return loss * torch.where(finite, 1.0, float("nan"))


class LossScaler(torch.amp.GradScaler):
    """torch's GradScaler, told which skipped steps came from a non-finite loss rather than an fp16 overflow."""

    def update_after_step(
        self, optimizer: torch.optim.Optimizer, non_finite_loss: torch.Tensor, new_scale: float | None = None
    ) -> torch.Tensor:
        """``update`` once ``step(optimizer)`` has run; returns 1.0 where that step was skipped (non-finite gradients),
        else 0.0, on the device. After a non-finite loss (``non_finite_loss`` > 0, the same on every process) the
        scale and its growth tracker stay as they were."""
        if not self.is_enabled():  # this device has no scaler: optimizer.step() ran unconditionally
            return torch.zeros((), device=non_finite_loss.device)
        # GradScaler keeps each step's verdict here until update() clears it (torch 2.x).
        found = self._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values()
        skipped = (sum(found) > 0).float()
        scale, tracker = self._scale.clone(), self._growth_tracker.clone()
        self.update(new_scale)
        keep = non_finite_loss > 0
        torch.where(keep, scale, self._scale, out=self._scale)
        torch.where(keep, tracker, self._growth_tracker, out=self._growth_tracker)
        return skipped


class RunningStats:
    """The running statistics of a model's normalisation layers (BatchNorm's mean, variance and batch count), saved
    at the start of each accumulation group and put back when its step is skipped."""

    def __init__(self, model: nn.Module) -> None:
        self.live = [
            buffer
            for module in model.modules()
            if getattr(module, "track_running_stats", False)
            for buffer in module.buffers(recurse=False)
        ]
        self.saved = [buffer.clone() for buffer in self.live]

    @torch.no_grad()
    def save(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    @torch.no_grad()
    def restore_if(self, skipped: torch.Tensor) -> None:
        keep = skipped > 0
        for live, saved in zip(self.live, self.saved, strict=True):
            torch.where(keep, saved, live, out=live)


@torch.no_grad()
def update_ema(ema: ModelEmaV3, model: nn.Module, step: int, applied: torch.Tensor) -> None:
    """timm's ``ModelEmaV3.update(model, step)`` (floating-point values move towards the model's by 1 - decay,
    integer buffers are copied), with the move weighted on the device by ``applied``: 0.0 leaves the EMA as it was."""
    weight = applied * (1.0 - ema.get_decay(step))
    ema_values, model_values = [], []
    for ema_value, model_value in zip(ema.module.state_dict().values(), model.state_dict().values(), strict=True):
        if ema_value.is_floating_point():
            ema_values.append(ema_value)
            model_values.append(model_value)
        else:  # BatchNorm's batch count: the model's was put back on a skipped step
            ema_value.copy_(model_value)
    moves = torch._foreach_sub(model_values, ema_values)
    torch._foreach_mul_(moves, weight)
    torch._foreach_add_(ema_values, moves)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> LossScaler:
    """fp16 needs loss scaling. In bf16 and fp32 the scale stays 1 (``update(1.0)``) and the scaler only does
    what it does for fp16 too: skip a step whose gradients are not finite, decided on the device."""
    if dtype == torch.float16:
        return LossScaler(device.type)
    return LossScaler(device.type, init_scale=1.0)


def no_skips() -> dict[str, int]:
    """Optimizer steps skipped, by cause: a non-finite loss in the group, or non-finite gradients of finite losses
    (an fp16 overflow)."""
    return {"non_finite": 0, "overflow": 0}


def skip_counts(saved: int | dict[str, int]) -> dict[str, int]:
    """``no_skips``'s counts from a checkpoint; older ones hold one number, of non-finite losses."""
    return {**no_skips(), **saved} if isinstance(saved, dict) else {**no_skips(), "non_finite": saved}


# A run stops when more than this share of an epoch's optimizer steps are skipped, once they number
# train.max_bad_steps: such a run no longer trains as configured, even without a long run of bad steps.
MAX_SKIPPED_SHARE = 0.25
# Under fp16 the scale only falls on overflows: below 1, the gradients overflow fp16 even unscaled. The run has
# diverged, and finite steps would soon round to zero.
MIN_LOSS_SCALE = 1.0


def bad_steps_problem(
    worst_run: int,
    skipped: dict[str, int],
    *,
    epoch: int,
    step: int,
    steps: int,
    max_bad_steps: int,
    fp16_scale: float | None,
) -> str | None:
    """Why the run must stop, read before anything is saved: ``max_bad_steps`` (``train.max_bad_steps``) non-finite
    losses in a row (``worst_run``), more than MAX_SKIPPED_SHARE of the epoch's steps so far skipped (once
    max_bad_steps or more), or an fp16 loss scale (None in bf16 and fp32) below MIN_LOSS_SCALE. ``epoch`` counts from
    1; ``step`` counts the run's optimizer steps, ``steps`` the epoch's so far. Each process finds the same: the
    counts and the scale follow agreed verdicts."""
    where = f"by step {step} (epoch {epoch})"
    if worst_run >= max_bad_steps:
        return f"{max_bad_steps} non-finite losses in a row (train.max_bad_steps) {where}"
    total = skipped["non_finite"] + skipped["overflow"]
    if total >= max_bad_steps and total > MAX_SKIPPED_SHARE * steps:
        return (
            f"{total} of the {steps} steps of epoch {epoch} skipped ({skipped['non_finite']} non-finite losses, "
            f"{skipped['overflow']} overflows): more than {MAX_SKIPPED_SHARE:.0%}, and train.max_bad_steps or more"
        )
    if fp16_scale is not None and fp16_scale < MIN_LOSS_SCALE:
        return f"the fp16 loss scale fell to {fp16_scale:.3g} {where}, so the gradients overflow fp16 even unscaled"
    return None
