"""Training statistics that stay on the device between reads.

Reading a CUDA tensor's value (``.item()``, ``.tolist()``) waits for every queued kernel: three reads per step keep
the GPU from running ahead of Python. ``StepMeter`` adds each micro-batch's loss and hits and each optimizer step's
fate (applied, or skipped and why) on the device, and is read once per log line, at recovery points and at the end
of an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MeterReading:
    loss_sum: float  # summed over the images of micro-batches with a finite loss
    correct: float
    count: float
    non_finite: int  # optimizer steps skipped for a non-finite loss in their accumulation group
    overflow: int  # optimizer steps skipped for non-finite gradients of finite losses (an fp16 overflow)
    bad_run: int  # steps with a non-finite loss in a row at the moment of reading
    worst_run: int  # longest such run since the previous reading


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class StepMeter:
    """Sums since the last ``read``, on the device; the run of steps with a non-finite loss carries across reads."""

    def __init__(self, device: torch.device, bad_run: int = 0) -> None:
        dtype = sum_dtype(device)
        # loss sum, correct, count (micro-batches); steps skipped for a non-finite loss, for an overflow
        self.sums = torch.zeros(5, dtype=dtype, device=device)
        # 1 once a loss of the current accumulation group is not finite; agreed across processes before the step
        self.group_bad = torch.zeros((), dtype=dtype, device=device)
        self.run = torch.full((), float(bad_run), dtype=dtype, device=device)
        self.worst = self.run.clone()

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count a micro-batch, scored against ``labels``; returns whether its loss is finite (on the device)."""
        finite = torch.isfinite(loss.detach())
        ok = finite.to(self.sums.dtype)
        n = labels.shape[0]
        # where() rather than a product: a non-finite loss times 0 is still NaN.
        loss_sum = torch.where(finite, loss.detach().to(self.sums.dtype) * n, 0.0)
        correct = (logits.detach().argmax(1) == labels).sum().to(self.sums.dtype) * ok
        self.sums[:3] += torch.stack([loss_sum, correct, n * ok])
        torch.maximum(self.group_bad, 1 - ok, out=self.group_bad)
        return finite

    @torch.no_grad()
    def end_step(self, skipped: torch.Tensor) -> None:
        """Count an optimizer step that the scaler skipped (``skipped``: 1.0) or applied (0.0), from ``group_bad``."""
        bad = self.group_bad
        self.sums[3:] += torch.stack([bad, skipped.to(bad.dtype) * (1 - bad)])
        self.run.add_(1).mul_(bad)  # +1 on a step with a non-finite loss, back to 0 on a finite one
        torch.maximum(self.worst, self.run, out=self.worst)
        bad.zero_()

    def read(self) -> MeterReading:
        """The sums since the last read (one host-device synchronisation), then start again from zero."""
        loss_sum, correct, count, non_finite, overflow, run, worst = torch.cat(
            [self.sums, self.run[None], self.worst[None]]
        ).tolist()
        self.sums.zero_()
        self.worst.copy_(self.run)
        return MeterReading(loss_sum, correct, count, int(non_finite), int(overflow), int(run), int(worst))
