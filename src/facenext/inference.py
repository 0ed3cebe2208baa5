"""Load a trained run and run its model over images: logits or embeddings, with test-time augmentation (TTA)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import MERGES, TTA_HELP, Config
from .data.datasets import DECODE_ERRORS, FaceImages, image_tensor, load_rgb
from .data.transforms import BatchToModel, eval_transform
from .device import amp_dtype, autocast, resolve_device
from .errors import UserError
from .models import fuse_batchnorm
from .run import RunDir


@dataclass(frozen=True)
class View:
    """One test-time view of a batch: an optional crop (box in fractions of the image), a resize, a mirror."""

    name: str
    box: tuple[float, float, float, float] | None = None  # top, left, height, width as fractions of the image
    scale: float = 1.0  # the model sees round(scale * image_size) pixels
    flip: bool = False


def _scale(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"TTA {spec!r}: {text!r} is not a number ({TTA_HELP})") from None
    if not 0.1 <= value <= 4:
        raise UserError(f"TTA {spec!r}: scale {value} out of range 0.1-4")
    return value


def _crops(scale: float) -> list[tuple[str, tuple[float, float, float, float]]]:
    far = 1 - scale
    spots = {"c": (far / 2, far / 2), "tl": (0.0, 0.0), "tr": (0.0, far), "bl": (far, 0.0), "br": (far, far)}
    return [(f"{k}{scale:g}", (top, left, scale, scale)) for k, (top, left) in spots.items()]


def parse_tta(spec: str) -> list[View]:
    """Views of a TTA spec: ``none``, ``flip``, ``five@S``, ``ten@S``, ``scales@S1,S2`` and ``+`` combinations.

    Combinations are products: ``flip+five@0.9`` gives the five crops and their mirrors (10 views).
    """
    views = [View("id")]
    crops_seen = False
    for part in spec.strip().lower().split("+"):
        kind, _, arg = part.partition("@")
        if kind == "none" and not arg:
            options = [View("")]
        elif kind == "flip" and not arg:
            options = [View(""), View("flip", flip=True)]
        elif kind in ("five", "ten") and arg:
            if crops_seen:
                raise UserError(f"TTA {spec!r}: combine at most one five@/ten@ crop set")
            crops_seen = True
            scale = _scale(arg, spec)
            if scale > 1:
                raise UserError(f"TTA {spec!r}: a crop scale must be at most 1")
            options = [View(name, box=box) for name, box in _crops(scale)]
            if kind == "ten":
                options += [View(name + "-flip", box=box, flip=True) for name, box in _crops(scale)]
        elif kind == "scales" and arg:
            options = [View(f"s{s:g}", scale=s) for s in (_scale(a, spec) for a in arg.split(","))]
        else:
            raise UserError(f"unknown TTA {spec!r}: use {TTA_HELP}")
        views = [
            View(
                "+".join(n for n in (a.name, b.name) if n and n != "id") or "id",
                a.box or b.box,
                a.scale * b.scale,
                a.flip != b.flip,
            )
            for a in views
            for b in options
        ]
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise UserError(f"TTA {spec!r} repeats views ({', '.join(names)})")
    return views


def apply_view(images: torch.Tensor, view: View, size: int) -> torch.Tensor:
    """The view of a whole batch, on its device: slicing, one interpolation, one flip; no per-image work."""
    height, width = images.shape[-2:]
    if view.box is not None:
        top, left, h, w = view.box
        ch, cw = max(1, round(h * height)), max(1, round(w * width))
        y0, x0 = min(round(top * height), height - ch), min(round(left * width), width - cw)
        images = images[..., y0 : y0 + ch, x0 : x0 + cw]
    target = max(8, round(view.scale * size))
    if images.shape[-2:] != (target, target):
        images = F.interpolate(images, size=(target, target), mode="bilinear", align_corners=False)
    if view.flip:
        images = images.flip(-1)
    return images


def merge_outputs(outputs: torch.Tensor, merge: str) -> torch.Tensor:
    """Merge ``(views, batch, classes)`` float32 outputs into logits.

    ``logit``: mean of logits (and of embeddings); ``prob``: log of the mean probability; ``geo``: mean of the
    log-probabilities (the normalised geometric mean of the probabilities). All give valid logits for softmax.
    """
    if merge == "logit" or outputs.shape[0] == 1:
        return outputs.mean(0)
    log_probs = torch.log_softmax(outputs, dim=-1)
    if merge == "geo":
        merged = log_probs.mean(0)
    elif merge == "prob":
        merged = torch.logsumexp(log_probs, dim=0) - math.log(outputs.shape[0])
    else:
        raise UserError(f"unknown merge {merge!r}: use one of {', '.join(MERGES)}")
    return merged.clamp_min(-1e4)  # float16 on disk: no -inf


@dataclass
class LoadedRun:
    name: str
    path: Path
    config: Config
    classes: list[str]
    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None

    @property
    def folder(self) -> RunDir:
        """The run folder the model came from (its files: weights, summary, fingerprint)."""
        return RunDir(self.path)


@dataclass
class Inference:
    """Merged outputs, each view's argmax (logits only) and the indices of images that could not be read."""

    merged: np.ndarray
    view_names: list[str]
    view_predictions: np.ndarray | None
    failed: list[int]


def load_run(run_dir: str | Path, weights: str = "best", device: torch.device | None = None) -> LoadedRun:
    """A run's model in eval mode with its ``best``, ``last``, ``ema`` or ``averaged`` weights, on ``device``."""
    run = RunDir(run_dir)
    config, classes = run.config(), run.classes()
    model = run.load_model(weights)
    device = device or resolve_device(config.train.device)
    model = model.to(device).eval()
    fuse_batchnorm(model)  # inference only: the lean model's norms disappear into its convolutions
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(run.name, run.path, config, classes, model, device, amp_dtype(device, config.train.amp))


class _Images(FaceImages):
    """Eval images that flag an unreadable file (flag False, zero image): never another image in its place."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        try:
            image = load_rgb(self.paths[index], self.size)
        except DECODE_ERRORS:
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), False
        return image_tensor(self.transform(image=image)["image"]), True


def image_loader(run: LoadedRun, paths: list[Path], batch_size: int) -> DataLoader:
    d = run.config.data
    dataset = _Images(paths, None, eval_transform(d.image_size), d.image_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=d.num_workers, pin_memory=run.device.type == "cuda")


UNREADABLE = "replace the file (`facenext check-data DATA` lists every unreadable image)"


@torch.inference_mode()
def infer(
    run: LoadedRun,
    paths: list[Path],
    tta: str,
    batch_size: int,
    return_feats: bool = False,
    merge: str = "logit",
    fill: bool = False,
    advice: str = UNREADABLE,
) -> Inference:
    """Run every TTA view of every batch through the model and merge them on the device.

    An unreadable image raises a UserError naming it and ending in ``advice`` (options of the calling command only),
    unless ``fill``: then a black placeholder stands in for it and its index is listed in ``failed`` for the caller
    to fill.
    """
    if merge not in MERGES:
        raise UserError(f"unknown merge {merge!r}: use one of {', '.join(MERGES)}")
    views = parse_tta(tta)
    d = run.config.data
    size, channels_last = d.image_size, run.config.train.channels_last
    to_model = BatchToModel(d.mean, d.std, run.device, channels_last)
    merged, predictions, failed = [], [], []
    start = 0
    for images, ok in image_loader(run, paths, batch_size):
        bad = (~ok).nonzero().flatten().tolist()
        if bad and not fill:
            raise UserError(f"cannot read image {paths[start + bad[0]]}: {advice}")
        failed += [start + i for i in bad]
        start += len(images)
        images = to_model(images)
        outputs = []
        for view in views:
            x = apply_view(images, view, size)
            if channels_last:  # crops and resizes may have changed the layout
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(run.device, run.dtype):
                outputs.append(run.model(x, return_feats=return_feats).float())
        stacked = torch.stack(outputs)
        merged.append(merge_outputs(stacked, "logit" if return_feats else merge).cpu())
        if not return_feats:
            predictions.append(stacked.argmax(-1).cpu())
    if failed:
        warnings.warn(f"{len(failed)} unreadable image(s), e.g. {paths[failed[0]]}", stacklevel=2)
    return Inference(
        torch.cat(merged).numpy(),
        [v.name for v in views],
        None if return_feats else torch.cat(predictions, dim=1).numpy(),
        failed,
    )


def run_model(
    run: LoadedRun, paths: list[Path], tta: str, batch_size: int, return_feats: bool, merge: str = "logit"
) -> np.ndarray:
    """Logits (``return_feats=False``) or embeddings of ``paths``, merged over the views of ``tta``."""
    return infer(run, paths, tta, batch_size, return_feats, merge).merged


def embed(run: LoadedRun, paths: list[Path], tta: str, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings (``return_feats``), one row per path."""
    feats = torch.from_numpy(run_model(run, paths, tta, batch_size, return_feats=True))
    return F.normalize(feats, dim=1).numpy()
