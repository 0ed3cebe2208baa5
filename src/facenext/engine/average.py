"""Average the weights of a run's best epochs (as timm's avg_checkpoints does) into ``averaged.pt``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import UserError
from ..models import current_weights, model_from_config
from ..run import RunDir
from .run_state import epoch_score

logger = logging.getLogger(__name__)


def average_checkpoints(run_dir: str | Path, top_k: int | None = None) -> dict[str, Any]:
    """Mean of the top-k epoch weights kept in ``run/top/``; integer buffers come from the best epoch."""
    run = RunDir(run_dir)
    states = [load_checkpoint(p) for p in run.top_files()]
    states.sort(key=lambda s: -epoch_score(s))
    states = states[:top_k] if top_k else states
    if not states:
        raise UserError(f"{run.top_dir} holds no epoch checkpoints: train with train.keep_top_k > 0 first")
    if len({frozenset(s["model"]) for s in states}) > 1:  # a timm run resumed across the face head's split
        with torch.device("meta"):  # only the names are needed: no memory, no weights
            model = model_from_config(run.config(), len(run.classes()))
        for s in states:
            s["model"] = current_weights(model, s["model"])
    averaged = {}
    for name, best in states[0]["model"].items():
        if best.is_floating_point():
            averaged[name] = torch.stack([s["model"][name].float() for s in states]).mean(0).to(best.dtype)
        else:  # e.g. BatchNorm's num_batches_tracked
            averaged[name] = best
    epochs = [s["epoch"] for s in states]
    out = run.weights_file("averaged")
    save_checkpoint(
        out,
        {"model": averaged, "epochs": epochs, "config": states[0]["config"], "classes": states[0]["classes"]},
    )
    summary = {"run": str(run.path), "epochs": epochs, "dev_scores": [epoch_score(s) for s in states]}
    logger.info(f"wrote {out}: mean of epochs {', '.join(map(str, epochs))}")
    return summary
