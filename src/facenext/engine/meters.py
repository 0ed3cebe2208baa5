"""Training statistics that stay on the device between reads.

Reading a CUDA tensor's value (``.item()``, ``.tolist()``) waits for every queued kernel: three reads per step keep
the GPU from running ahead of Python. ``StepMeter`` adds each step's loss, hits and non-finite flag on the device
and is read once per log line, at recovery points and at the end of an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MeterReading:
    loss_sum: float  # summed over the images of steps with a finite loss
    correct: float
    count: float
    non_finite: int  # steps with a non-finite loss
    bad_run: int  # non-finite losses in a row at the moment of reading
    worst_run: int  # longest such run since the previous reading


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class StepMeter:
    """Sums since the last ``read``, on the device; the run of non-finite losses carries across reads."""

    def __init__(self, device: torch.device, bad_run: int = 0) -> None:
        dtype = sum_dtype(device)
        self.sums = torch.zeros(4, dtype=dtype, device=device)  # loss sum, correct, count, non-finite steps
        self.run = torch.full((), float(bad_run), dtype=dtype, device=device)
        self.worst = self.run.clone()

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        finite = torch.isfinite(loss).to(self.sums.dtype)
        n = labels.shape[0]
        # where() rather than a product: a non-finite loss times 0 is still NaN.
        loss_sum = torch.where(finite > 0, loss.detach().to(self.sums.dtype) * n, 0.0)
        correct = (logits.detach().argmax(1) == labels).sum().to(self.sums.dtype) * finite
        self.sums += torch.stack([loss_sum, correct, n * finite, 1 - finite])
        self.run.mul_(1 - finite).add_(1 - finite)  # +1 on a non-finite loss, back to 0 on a finite one
        torch.maximum(self.worst, self.run, out=self.worst)

    def read(self) -> MeterReading:
        """The sums since the last read (one host-device synchronisation), then start again from zero."""
        loss_sum, correct, count, non_finite, run, worst = torch.cat(
            [self.sums, self.run[None], self.worst[None]]
        ).tolist()
        self.sums.zero_()
        self.worst.copy_(self.run)
        return MeterReading(loss_sum, correct, count, int(non_finite), int(run), int(worst))
