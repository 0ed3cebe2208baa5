"""Augmentation presets (uint8 HWC in, uint8 HWC out) and the device-side step that makes model inputs.

Workers decode and augment in uint8 and never normalise: a uint8 image is a quarter of the bytes of a float one
through worker queues, pinned memory and the host-to-device copy, and normalising a batch costs a GPU nothing.
``BatchToModel`` does it on the device, as timm's prefetching loader and FFCV do.

The ``seed`` and ``light`` presets run ``FaceAugment``: the seed's list (flip, colour jitter, rotation, affine,
perspective) in two passes over the image instead of one per operation. The other presets are albumentations
pipelines as they come: ``randaug``, and ``wild``, for in-the-wild photos (random resized crops, colour and grey,
blur and lost resolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError

PRESETS = ("seed", "randaug", "light", "wild", "none")
# Presets whose augmentation can also run batched on the training device (``data.augment_device``).
DEVICE_PRESETS = ("seed", "light")
PRESET_ERASE = {"seed": 0.3, "randaug": 0.3}  # each preset's chance of an erased box (data.erase overrides it)

# ITU-R 601 luma, as torchvision's rgb_to_grayscale (used by its saturation and contrast adjustments).
LUMA = np.array([0.299, 0.587, 0.114])


class FaceAugment(A.ImageOnlyTransform):
    """Horizontal flip, colour jitter, rotation, scale, translation and perspective, fused into two passes.

    Brightness, contrast and saturation are affine maps of a pixel's RGB values that commute with each other (the
    contrast pivot, the mean luma, is unchanged by saturation and scales with brightness), so together they are one
    colour matrix, applied by ``cv2.transform``. Flip, rotation, scale, translation and perspective are one
    homography, applied by one bilinear warp with a black border. The warp runs on four channels (RGB plus an unused
    one), OpenCV's vector path, which is about twice as fast as three channels even with the two conversions. Colour
    comes before the warp, so the border stays black, as in the seed's torchvision list.

    The parameters follow torchvision's: ``ColorJitter(brightness, contrast, saturation)`` factors drawn from
    ``[1 - x, 1 + x]``; ``RandomRotation(rotate)``; ``RandomAffine(translate=(translate, translate), scale=scale)``;
    ``RandomPerspective(perspective, p=perspective_p)``. The colour matrix saturates once at the end instead of
    clipping after every adjustment. Geometric only for images: masks, boxes and keypoints are not supported.

    Args:
        flip: probability of a horizontal flip.
        brightness, contrast, saturation: jitter strengths (0 turns one off).
        colour_p: probability of applying the colour jitter at all.
        rotate: largest rotation in degrees (either way).
        translate: largest shift, as a fraction of the image side, along each axis.
        scale: range of the zoom factor.
        affine_p: probability of applying rotation, scale and translation at all.
        perspective: how far (as a fraction of half the side) each corner may move inwards.
        perspective_p: probability of the perspective distortion.
        p: probability of applying the transform at all.
    """

    def __init__(
        self,
        flip: float = 0.5,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        colour_p: float = 1.0,
        rotate: float = 0.0,
        translate: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        affine_p: float = 1.0,
        perspective: float = 0.0,
        perspective_p: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.flip, self.colour_p, self.affine_p = flip, colour_p, affine_p
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.rotate, self.translate, self.scale = rotate, translate, tuple(scale)
        self.perspective, self.perspective_p = perspective, perspective_p

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (
            "flip",
            "brightness",
            "contrast",
            "saturation",
            "colour_p",
            "rotate",
            "translate",
            "scale",
            "affine_p",
            "perspective",
            "perspective_p",
        )

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        rand = self.py_random
        factors = (1.0, 1.0, 1.0)
        if rand.random() < self.colour_p:
            factors = tuple(rand.uniform(1 - s, 1 + s) for s in (self.brightness, self.contrast, self.saturation))
        matrix = np.eye(3)
        if rand.random() < self.flip:
            matrix = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        if rand.random() < self.affine_p:
            angle = rand.uniform(-self.rotate, self.rotate)
            zoom = rand.uniform(*self.scale)
            shift = (rand.uniform(-1, 1) * self.translate * width, rand.uniform(-1, 1) * self.translate * height)
            matrix = _about_centre(angle, zoom, shift, width, height) @ matrix
        warped = False
        if rand.random() < self.perspective_p:
            matrix = _perspective(self.perspective, width, height, rand) @ matrix
            warped = True
        return {"factors": factors, "matrix": matrix, "perspective": warped}

    def apply(
        self, img: np.ndarray, factors: tuple[float, float, float], matrix: np.ndarray, perspective: bool, **_: Any
    ) -> np.ndarray:
        height, width = img.shape[:2]
        rgbx = cv2.cvtColor(cv2.transform(img, colour_matrix(img, *factors)), cv2.COLOR_RGB2RGBA)
        size, flags = (width, height), cv2.INTER_LINEAR
        if perspective:
            rgbx = cv2.warpPerspective(rgbx, matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
        else:
            rgbx = cv2.warpAffine(rgbx, matrix[:2], size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
        return cv2.cvtColor(rgbx, cv2.COLOR_RGBA2RGB)


def colour_matrix(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """The 3x4 ``cv2.transform`` matrix (RGB and an offset) of brightness, contrast and saturation factors.

    Saturation blends each pixel with its luma, contrast blends it with the image's mean luma, brightness scales.
    """
    mean_luma = float(np.dot(cv2.mean(image)[:3], LUMA)) if contrast != 1.0 else 0.0
    mix = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), LUMA)
    out = np.empty((3, 4))
    out[:, :3] = brightness * contrast * mix
    out[:, 3] = brightness * (1 - contrast) * mean_luma
    return out.astype(np.float32)


def _about_centre(angle: float, zoom: float, shift: tuple[float, float], width: int, height: int) -> np.ndarray:
    """Rotation by ``angle`` degrees (counter-clockwise) and zoom about the image centre, then a shift."""
    centre = ((width - 1) / 2, (height - 1) / 2)
    matrix = np.vstack([cv2.getRotationMatrix2D(centre, angle, zoom), [0.0, 0.0, 1.0]])
    matrix[:2, 2] += shift
    return matrix


def _perspective(distortion: float, width: int, height: int, rand: Any) -> np.ndarray:
    """torchvision's RandomPerspective: each corner moves inwards by up to ``distortion`` of half the side."""
    dx, dy = distortion * width / 2, distortion * height / 2
    right, bottom = width - 1, height - 1
    corners = np.float32([[0, 0], [right, 0], [right, bottom], [0, bottom]])
    inward = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    moved = corners + inward * np.float32([[rand.uniform(0, dx), rand.uniform(0, dy)] for _ in range(4)])
    return cv2.getPerspectiveTransform(corners, moved).astype(np.float64)


FUSED_PRESETS: dict[str, dict[str, Any]] = {
    # The seed's list: flip, ColorJitter(0.16, 0.15, 0.1), RandomRotation(18), RandomAffine(translate 0.1,
    # scale 0.9-1.1), RandomPerspective(0.2, p=0.2).
    "seed": {
        "brightness": 0.16,
        "contrast": 0.15,
        "saturation": 0.1,
        "rotate": 18,
        "translate": 0.1,
        "scale": (0.9, 1.1),
        "perspective": 0.2,
        "perspective_p": 0.2,
    },
    # Half the strength, colour and geometry each on half the images: for small data and short CPU runs.
    "light": {
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.05,
        "colour_p": 0.5,
        "rotate": 10,
        "translate": 0.05,
        "scale": (0.95, 1.05),
        "affine_p": 0.5,
    },
}


class DeferredFaceAugment(FaceAugment):
    """Draws ``FaceAugment``'s parameters from the sample's generators exactly as the CPU path does, and leaves the
    image as it is: ``facenext.data.device_augment.DeviceAugment`` applies them to whole batches on the device."""

    def apply(self, img: np.ndarray, **_: Any) -> np.ndarray:
        return img


class DeferredErasing(A.Erasing):
    """``A.Erasing``'s box, drawn as on the CPU path, left for the device to fill."""

    def apply(self, img: np.ndarray, **_: Any) -> np.ndarray:
        return img


def _wild(size: int, crop_scale: float) -> list[A.BasicTransform]:
    """Photos taken anywhere differ in framing, colour, light and sharpness more than in pose: crops of
    ``crop_scale`` to all of the face at near-square shapes, strong colour jitter, some grey photos, some blurred or
    low-resolution ones (issue 26, measured on celeba_faces: benchmarks/recipes.md)."""
    return [
        A.RandomResizedCrop((size, size), scale=(crop_scale, 1.0), ratio=(0.9, 1.1), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
        A.ToGray(p=0.1),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0), A.Downscale(scale_range=(0.4, 0.8), p=1.0)], p=0.2),
    ]


def _augmentations(preset: str, size: int, crop_scale: float, deferred: bool = False) -> list[A.BasicTransform]:
    if preset in FUSED_PRESETS:
        return [(DeferredFaceAugment if deferred else FaceAugment)(**FUSED_PRESETS[preset])]
    if preset == "wild":
        return _wild(size, crop_scale)
    if preset == "randaug":
        # RandAugment's recipe (Cubuk et al. 2020): two operations drawn per image from a pool, at one magnitude.
        return [
            A.HorizontalFlip(p=0.5),
            A.SomeOf(
                [
                    A.Affine(rotate=(-20, 20), p=1.0),
                    A.Affine(shear={"x": (-15, 15)}, p=1.0),
                    A.Affine(shear={"y": (-15, 15)}, p=1.0),
                    A.Affine(translate_percent={"x": (-0.1, 0.1)}, p=1.0),
                    A.Affine(translate_percent={"y": (-0.1, 0.1)}, p=1.0),
                    A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.0, p=1.0),
                    A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.3, p=1.0),
                    A.ColorJitter(brightness=0.0, contrast=0.0, saturation=0.3, hue=0.0, p=1.0),
                    A.Sharpen(p=1.0),
                    A.Posterize(num_bits=(4, 6), p=1.0),
                    A.Solarize(p=1.0),
                    A.Equalize(p=1.0),
                    A.AutoContrast(p=1.0),
                ],
                n=2,
                p=1.0,
            ),
        ]
    if preset == "none":
        return []
    raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(PRESETS)}")


def erase_fill(mean: Sequence[float]) -> tuple[int, ...]:
    """The erased patch's colour: the mean, which ``BatchToModel`` normalises to zero (up to uint8 rounding), as
    torchvision's RandomErasing leaves it."""
    return tuple(round(255 * m) for m in mean)


def train_transform(
    preset: str,
    size: int,
    mean: Sequence[float],
    on_device: bool = False,
    erase: float | None = None,
    crop_scale: float = 0.6,
) -> A.Compose:
    """Resize first (augmenting fewer pixels is cheaper), augment, then erase with the mean colour.

    ``on_device`` (``DEVICE_PRESETS`` only): the same pipeline with the same random draws, but the colour matrix,
    the warp and the erasing are only drawn, not applied (``DeferredFaceAugment``, ``DeferredErasing``); workers
    then only decode and resize. ``erase``: the probability of erasing a box (``data.erase``; None: the preset's).
    ``crop_scale``: the ``wild`` preset's smallest crop, as a share of the image's area (``data.crop_scale``).
    """
    if on_device and preset not in DEVICE_PRESETS:
        raise ValueError(f"augmentation preset {preset!r} runs on the CPU only; on the device: {DEVICE_PRESETS}")
    erase_p = PRESET_ERASE.get(preset, 0.0) if erase is None else erase
    if not 0.0 <= erase_p <= 1.0:
        raise UserError(f"data.erase={erase}: give the probability of erasing a box, between 0 and 1")
    erasing = []
    if erase_p > 0:
        step = DeferredErasing if on_device else A.Erasing
        erasing = [step(scale=(0.05, 0.1), fill=erase_fill(mean), p=erase_p)]
    if not 0.0 < crop_scale <= 1.0:
        raise UserError(f"data.crop_scale={crop_scale}: give the smallest share of the image a crop keeps, in (0, 1]")
    augment = _augmentations(preset, size, crop_scale, deferred=on_device)
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA), *augment, *erasing])


def data_train_transform(d: DataConfig, on_device: bool = False) -> A.Compose:
    """``train_transform`` as a config's ``data`` section sets it: preset, size, mean, erasing and crop scale."""
    return train_transform(d.augment, d.image_size, d.mean, on_device, erase=d.erase, crop_scale=d.crop_scale)


def eval_transform(size: int) -> A.Compose:
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA)])


class BatchToModel:
    """Loader batches (uint8, N x H x W x 3) to the model's input: on ``device``, float, normalised, NCHW.

    The loader's pixel-interleaved layout is kept: the result is a channels-last NCHW view of it, or a contiguous
    copy without ``channels_last``.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device | str, channels_last: bool
    ) -> None:
        self.device = torch.device(device)
        self.channels_last = channels_last
        std_t = torch.tensor(std, dtype=torch.float32) * 255
        self.scale = (1 / std_t).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) * 255 / std_t).to(self.device)
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _row(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Width x 3 copies of the per-channel constants: the elementwise kernels then run over whole contiguous
        # image rows instead of a 3-long innermost dimension (four times faster on a CPU).
        if width not in self._rows:
            self._rows[width] = (self.scale.repeat(width, 1), self.shift.repeat(width, 1))
        return self._rows[width]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        scale, shift = self._row(images.shape[2])
        # copy=True: a float batch already on the device must not be normalised in place under its owner.
        x = images.to(self.device, non_blocking=True).to(torch.float32, copy=True)
        x = x.mul_(scale).add_(shift).permute(0, 3, 1, 2)
        return x if self.channels_last else x.contiguous()
