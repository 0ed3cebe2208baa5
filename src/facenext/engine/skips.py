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
