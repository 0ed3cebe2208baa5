"""Load a trained run and run its model over images: logits or embeddings, with flip test-time augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import Config
from .data.datasets import FaceImages
from .data.transforms import eval_transform
from .device import amp_dtype, autocast, resolve_device
from .engine.checkpoint import load_checkpoint
from .engine.train import build_model, load_run_config, to_device
from .errors import UserError

TTA_MODES = ("none", "flip")
WEIGHTS = ("best", "last", "ema", "averaged")


@dataclass
class LoadedRun:
    name: str
    path: Path
    config: Config
    classes: list[str]
    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None


def load_run(run_dir: str | Path, weights: str = "best", device: torch.device | None = None) -> LoadedRun:
    """A run's model in eval mode with its ``best``, ``last``, ``ema`` or ``averaged`` weights, on ``device``."""
    run_dir = Path(run_dir)
    config, classes = load_run_config(run_dir)
    if weights not in WEIGHTS:
        raise UserError(f"unknown weights {weights!r}: use one of {', '.join(WEIGHTS)}")
    state = load_checkpoint(run_dir / ("last.pt" if weights == "ema" else f"{weights}.pt"))
    if weights == "ema":
        if state.get("ema") is None:
            raise UserError(f"{run_dir} was trained without EMA (train.ema=false): use --weights best or last")
        state = {**state, "model": state["ema"]}
    if state.get("classes") != classes:
        raise UserError(f"{run_dir}/{weights}.pt does not match {run_dir}/classes.json: retrain the run")
    device = device or resolve_device(config.train.device)
    model = build_model(config, len(classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"{run_dir}/{weights}.pt holds weights of another architecture than its config.yaml") from None
    model = model.to(device).eval()
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(run_dir.name, run_dir, config, classes, model, device, amp_dtype(device, config.train.amp))


def image_loader(run: LoadedRun, paths: list[Path], batch_size: int) -> DataLoader:
    d = run.config.data
    dataset = FaceImages(paths, None, eval_transform(d.image_size, d.mean, d.std), d.image_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=d.num_workers, pin_memory=run.device.type == "cuda")


@torch.no_grad()
def run_model(run: LoadedRun, paths: list[Path], tta: str, batch_size: int, return_feats: bool) -> np.ndarray:
    """Logits (``return_feats=False``) or embeddings of ``paths``; ``flip`` averages each image with its mirror."""
    if tta not in TTA_MODES:
        raise UserError(f"unknown TTA {tta!r}: use one of {', '.join(TTA_MODES)}")
    outputs = []
    for images, _ in image_loader(run, paths, batch_size):
        images = to_device(images, run.device, run.config.train.channels_last)
        views = [images, images.flip(3)] if tta == "flip" else [images]
        with autocast(run.device, run.dtype):
            out = torch.stack([run.model(v, return_feats=return_feats).float() for v in views]).mean(0)
        outputs.append(out.cpu())
    return torch.cat(outputs).numpy()


def embed(run: LoadedRun, paths: list[Path], tta: str, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings (``return_feats``), one row per path."""
    feats = torch.from_numpy(run_model(run, paths, tta, batch_size, return_feats=True))
    return F.normalize(feats, dim=1).numpy()
