"""What a training run says on the terminal: where it starts, in what precision, within what budget, and each epoch."""

from __future__ import annotations

from typing import Any

import torch

from .budget import BudgetPlanner, duration_text


def position_text(epoch: int, batch: int, batches_per_epoch: int) -> str:
    """Where a run starts: ``epoch 3``, ``epoch 3, batch 5``, or ``the end of epoch 3`` (stopped after its last
    batch); ``epoch`` and ``batch`` count from 0, as a checkpoint holds them."""
    where = f"epoch {epoch + 1}"
    if batch >= batches_per_epoch:
        return f"the end of {where}"
    return f"{where}, batch {batch + 1}" if batch else where


def precision_text(dtype: torch.dtype | None, amp: bool) -> str:
    if dtype == torch.bfloat16:
        return "bf16 autocast (native on this card)"
    if dtype == torch.float16:
        return "fp16 autocast with loss scaling (no native bf16 on this card)"
    return "fp32" + (" (mixed precision is for CUDA GPUs)" if amp else "")


def budget_note(budget: BudgetPlanner, time_limit_h: float | None) -> str:
    """The budget and what is spent of it, and a warning when the session's time limit ends the run first."""
    if budget.budget_s is None:
        return ""
    spent = budget.spent()
    note = f"; budget {duration_text(budget.budget_s)}"
    note += f", {duration_text(spent)} spent" if spent else " (epochs planned after the first)"
    if time_limit_h is not None and time_limit_h * 3600 < budget.budget_s - spent:
        note += f"; the time limit ({time_limit_h:g} h) stops this session first: resume to finish the schedule"
    return note


def epoch_line(row: dict[str, Any], planned: int, ema: bool) -> str:
    """An epoch's metrics.csv row as one line; ``ema``: the run keeps an EMA of its weights."""
    ema_text = f" (EMA {row['ema_dev_acc']:.3f})" if ema else ""
    skipped = ""
    if row["skipped_steps"]:
        skipped = (
            f"  {row['skipped_steps']} steps skipped ({row['non_finite_loss_steps']} non-finite losses, "
            f"{row['overflow_steps']} overflows)"
        )
    if "dev_eer" in row:
        skipped += f"  dev EER {row['dev_eer']:.4f} score {row['dev_score']:.4f}"
    return (
        f"epoch {row['epoch']:>3}/{planned}  train loss {row['train_loss']:.3f} "
        f"acc {row['train_acc']:.3f}  dev loss {row['dev_loss']:.3f} acc {row['dev_acc']:.3f}{ema_text}  "
        f"lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {row['epoch_s']:.1f}s{skipped}"
    )


STALL_EPOCH = 5  # a run whose training accuracy is still at chance this many epochs in is not going to learn


def stall_warning(row: dict[str, Any], classes: int, loss: str) -> str:
    """A warning for a run that is not learning: at ``STALL_EPOCH``, training accuracy no better than twice chance.

    Such a run looks healthy (finite losses, a schedule under way) and ends at chance after its whole budget: ArcFace
    from scratch did so at 96 px on in-the-wild faces (benchmarks/recipes.md, issue 26), its loss flat from epoch 4."""
    if row["epoch"] != STALL_EPOCH or row["train_acc"] > 2 / classes:
        return ""
    if loss == "ce":
        fix = "check the training labels, or change train.lr"
    else:
        fix = f"{loss} from scratch can stay there: lower train.margin, or train with ce first and fine-tune from it"
    return (
        f"training accuracy {row['train_acc']:.3f} after {STALL_EPOCH} epochs is chance for {classes} classes: this "
        f"run is not learning; {fix}"
    )
