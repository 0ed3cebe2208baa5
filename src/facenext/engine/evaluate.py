"""The dev split's mean cross-entropy and accuracy, summed on the device and read once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.transforms import BatchToModel
from ..device import autocast
from .meters import sum_dtype


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, to_model: BatchToModel, dtype: torch.dtype | None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=sum_dtype(to_model.device), device=to_model.device)  # read once, at the end
    for images, labels in loader:
        images = to_model(images)
        labels = labels.to(to_model.device, non_blocking=True)
        with autocast(to_model.device, dtype):
            logits = model(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += len(labels)
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count
