"""Augmentation presets as albumentations pipelines (numpy HWC uint8 in, normalised CHW tensor out)."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

PRESETS = ("seed", "randaug", "light", "none")


def _augmentations(preset: str) -> list[A.BasicTransform]:
    if preset == "seed":
        # The seed's list: flip, colour jitter, rotation 18, affine (translate 0.1, scale 0.9-1.1), perspective 0.2.
        return [
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.16, contrast=0.15, saturation=0.1, hue=0.0, p=1.0),
            A.Affine(rotate=(-18, 18), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), p=1.0),
            A.Perspective(scale=(0.02, 0.1), p=0.2),
        ]
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
    if preset == "light":
        return [
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.05, hue=0.0, p=0.5),
            A.Affine(rotate=(-10, 10), translate_percent=(-0.05, 0.05), scale=(0.95, 1.05), p=0.5),
        ]
    if preset == "none":
        return []
    raise ValueError(f"unknown augmentation preset {preset!r}: choose one of {', '.join(PRESETS)}")


def train_transform(preset: str, size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize first (augmenting fewer pixels is cheaper), augment, normalise, then erase (fills with the mean)."""
    erase = [A.Erasing(scale=(0.05, 0.1), fill=0, p=0.3)] if preset in ("seed", "randaug") else []
    return A.Compose(
        [A.Resize(size, size, interpolation=cv2.INTER_AREA), *_augmentations(preset), A.Normalize(mean, std)]
        + erase
        + [ToTensorV2()]
    )


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA), A.Normalize(mean, std), ToTensorV2()])
