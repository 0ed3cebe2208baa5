"""Augmentation on the training device (``data.augment_device``): workers decode, the GPU augments whole batches.

``FaceAugment`` costs a CPU worker about as much as decoding: one colour matrix and one homography per image, then
erasing. On a GPU the same maths over a whole batch is a batched 3x3 matrix product, one ``grid_sample`` and a
masked fill, a sliver of a training step. Here the workers run the CPU path's own pipeline with
``train_transform(..., on_device=True)``: the same generators seeded by the sampler key, the same draws in the same
order, so every sample gets exactly the parameters the CPU path would give it, whatever the batch or worker count
and after a resume. They return those parameters beside the decoded uint8 image, and ``DeviceAugment`` (a
``BatchToModel``) applies them on the device before normalising.

Drawing stays in the workers (a few microseconds per image); applying is what moves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from .datasets import DECODE_ERRORS, FaceImages, load_rgb
from .transforms import DEVICE_PRESETS, LUMA, PRESETS, BatchToModel, FaceAugment, erase_fill, train_transform

AUGMENT_DEVICES = ("cpu", "gpu", "auto")
# Per sample: brightness, contrast and saturation factors; the 3x3 homography (row-major, pixel coordinates, as
# cv2.warpPerspective takes it); the erased box x1, y1, x2, y2 (x2 == x1: none).
PARAMS = 16
# auto: move augmentation to the GPU when it is at least this share of a worker's time per image.
AUTO_SHARE = 0.2
AUTO_IMAGES = 16


def identity_params() -> np.ndarray:
    params = np.zeros(PARAMS)
    params[:3] = 1.0
    params[3:12] = np.eye(3).ravel()
    return params


def drawn_params(transform: A.Compose) -> np.ndarray:
    """The parameters the deferred steps of ``transform`` drew in its last call (identity where not applied)."""
    params = identity_params()
    for step in transform.transforms:
        drawn = step.params  # albumentations resets it to {} when a step is not applied
        if isinstance(step, FaceAugment) and drawn:
            params[:3] = drawn["factors"]
            params[3:12] = np.asarray(drawn["matrix"], dtype=np.float64).ravel()
        elif isinstance(step, A.Erasing) and drawn and len(drawn["holes"]):
            params[12:16] = drawn["holes"][0]
    return params


class DeviceAugmentImages(FaceImages):
    """``FaceImages`` whose samples are ``((uint8 image, parameters), label)``: decoded and resized in the worker,
    augmented later by ``DeviceAugment``. ``transform`` must come from ``train_transform(..., on_device=True)``."""

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image, label = super().__getitem__(key)
        return (image, torch.from_numpy(drawn_params(self.transform))), label


class DeviceAugment(BatchToModel):
    """``BatchToModel`` that first applies ``DeviceAugmentImages``' parameters to the batch on the device.

    Colour, then the warp (bilinear, black outside the image, as ``cv2.warpPerspective`` with a constant border),
    then erasing with the mean colour: ``FaceAugment`` and ``A.Erasing``'s order. Pixels stay float between the
    steps (the CPU path rounds to uint8 after each). Plain uint8 batches (the dev split) are only normalised.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device | str, channels_last: bool
    ) -> None:
        super().__init__(mean, std, device, channels_last)
        self.fill = torch.tensor(erase_fill(mean), dtype=torch.float32, device=self.device)
        self.luma = torch.tensor(LUMA, dtype=torch.float32, device=self.device)
        self.eye = torch.eye(3, device=self.device)
        self.grey = torch.ones(3, 1, device=self.device) * self.luma  # every row is the luma weights
        self._pixels: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return super().__call__(batch)
        images, params = batch
        x = self.augment(images, params)
        x = x.mul_(self.scale.view(1, 3, 1, 1)).add_(self.shift.view(1, 3, 1, 1))
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def augment(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 and N x ``PARAMS`` parameters to augmented float N x 3 x H x W in 0..255."""
        x = images.to(self.device, non_blocking=True).to(torch.float32)
        params = params.to(torch.float64)
        # Inverted on the host in float64: a few microseconds for a batch of 3x3 matrices, and exact enough.
        inverse = torch.linalg.inv(params[:, 3:12].reshape(-1, 3, 3)).reshape(-1, 9)
        packed = torch.cat([params[:, :3], inverse, params[:, 12:16]], dim=1).to(torch.float32)
        if self.device.type == "cuda":
            packed = packed.pin_memory()  # copied without waiting for the GPU: no synchronisation per batch
        packed = packed.to(self.device, non_blocking=True)
        x = self._colour(x, packed[:, :3])
        x = self._warp(x.permute(0, 3, 1, 2), packed[:, 3:12].view(-1, 3, 3))
        return self._erase(x, packed[:, 12:16])

    def _colour(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """``transforms.colour_matrix`` for a whole batch: saturation blends with the luma, contrast with the mean
        luma, brightness scales; one 3x3 matrix and one offset per image, saturated once."""
        brightness, contrast, saturation = factors.unbind(1)
        mean_luma = x.mean(dim=(1, 2)) @ self.luma
        mix = saturation.view(-1, 1, 1) * self.eye + (1 - saturation).view(-1, 1, 1) * self.grey
        matrix = (brightness * contrast).view(-1, 1, 1) * mix
        offset = brightness * (1 - contrast) * mean_luma
        return (torch.einsum("nij,nhwj->nhwi", matrix, x) + offset.view(-1, 1, 1, 1)).clamp_(0, 255)

    def _warp(self, x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """Each output pixel samples the source at ``inverse`` @ (x, y, 1), as ``cv2.warpPerspective`` does."""
        n, _, height, width = x.shape
        pixels, to_unit = self._pixel_grid(height, width)
        source = torch.einsum("nij,pj->npi", inverse, pixels)
        grid = (source[..., :2] / source[..., 2:] * to_unit - 1).view(n, height, width, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def _pixel_grid(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y, 1) of every output pixel, and the scale from pixel to grid_sample coordinates (align_corners:
        -1 and 1 are the centres of the first and last pixels), made once per size on the device."""
        if (height, width) not in self._pixels:
            ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3).to(torch.float32)
            to_unit = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)])
            self._pixels[height, width] = (grid.to(self.device), to_unit.to(self.device))
        return self._pixels[height, width]

    def _erase(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        x1, y1, x2, y2 = (b.view(-1, 1, 1) for b in boxes.unbind(1))
        cols = torch.arange(width, device=x.device).view(1, 1, -1)
        rows = torch.arange(height, device=x.device).view(1, -1, 1)
        inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
        return torch.where(inside.unsqueeze(1), self.fill.view(1, 3, 1, 1), x)


def batch_to_model(
    dataset: Any, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool
) -> BatchToModel:
    """The loader-to-model step for ``dataset``: ``DeviceAugment`` when it defers augmentation to the device."""
    augment = isinstance(dataset, DeviceAugmentImages)
    return (DeviceAugment if augment else BatchToModel)(mean, std, device, channels_last)


def choose_augment_device(
    setting: str,
    preset: str,
    device: torch.device,
    paths: Sequence[Path],
    size: int,
    mean: Sequence[float],
    recorded: str | None = None,
) -> tuple[str, str]:
    """Where augmentation runs (``cpu`` or ``gpu``) for ``data.augment_device``, and a line saying why ("" when
    there is nothing to say). Raises ValueError for a setting or preset that cannot work.

    ``auto``: the workers augment when training on the CPU (the device would be the same cores). On CUDA, a few
    training images are decoded and pushed through both pipelines here; augmentation moves to the GPU when it is at
    least ``AUTO_SHARE`` of a worker's time per image, i.e. when moving it raises what the workers can feed by a
    quarter or more, for a cost on the GPU well under a percent of a training step (``make gpu-check`` shows both).
    ``recorded``: the choice a resumed run made at its start (``cpu`` or ``gpu``), which ``auto`` keeps, so that the
    run goes on with the same augmentation whatever a timing here would say.
    """
    if setting not in AUGMENT_DEVICES:
        raise ValueError(f"unknown augmentation device {setting!r}: choose one of {', '.join(AUGMENT_DEVICES)}")
    if preset not in DEVICE_PRESETS:
        if setting == "gpu" and preset in PRESETS and preset != "none":  # unknown presets: train_transform says so
            raise ValueError(f"augmentation preset {preset!r} runs on the CPU only; on the device: {DEVICE_PRESETS}")
        return "cpu", ""
    if setting != "auto":
        return setting, f"data.augment_device={setting}: augmenting on {device}" if setting == "gpu" else ""
    if recorded in ("cpu", "gpu"):
        said = recorded == "gpu" or device.type == "cuda"  # on a CPU device, augmenting in the workers goes unsaid
        return recorded, f"data.augment_device=auto: {recorded}, as this run chose when it started" if said else ""
    if device.type != "cuda":
        return "cpu", ""
    full, decode = worker_seconds(paths[:AUTO_IMAGES], preset, size, mean)
    share = 1 - decode / full
    choice = "gpu" if share >= AUTO_SHARE else "cpu"
    return choice, (
        f"data.augment_device=auto: {choice} (per worker: decode + augment {1 / full:.0f} images/s, decode only "
        f"{1 / decode:.0f} images/s; augmentation is {share:.0%} of a worker's time, the threshold {AUTO_SHARE:.0%})"
    )


def worker_seconds(paths: Sequence[Path], preset: str, size: int, mean: Sequence[float]) -> tuple[float, float]:
    """Seconds per image that one worker spends with augmentation on the CPU, and with it deferred (both decode)."""
    pipelines = [train_transform(preset, size, mean), train_transform(preset, size, mean, on_device=True)]
    seconds = []
    for transform in pipelines:
        tic = time.perf_counter()
        for path in paths:
            try:
                transform(image=load_rgb(path, size))
            except DECODE_ERRORS:
                continue  # a broken file costs the same on either path
        seconds.append((time.perf_counter() - tic) / max(len(paths), 1))
    return seconds[0], max(seconds[1], 1e-9)
