"""Datasets over competition folders, and a sampler that makes augmentation reproducible per sample."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..errors import UserError
from .layout import list_classes, list_images


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """Decode an image as RGB uint8; JPEGs bigger than ``size`` are decoded at reduced scale (draft mode)."""
    with Image.open(path) as img:
        if size and img.format == "JPEG":
            img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB"))


def image_folder(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Paths and class indices of a folder-per-identity split, indexed by ``classes`` (the train folder order)."""
    index = {name: i for i, name in enumerate(classes)}
    found = list_classes(folder)
    strangers = [name for name in found if name not in index]
    if strangers:
        raise UserError(
            f"{folder} has {len(strangers)} identities that are not in the training classes (e.g. {strangers[0]}): "
            "train and dev must come from the same competition"
        )
    paths, labels = [], []
    for name in found:
        for file_name in list_images(folder / name):
            paths.append(folder / name / file_name)
            labels.append(index[name])
    if not paths:
        raise UserError(f"{folder} holds no images: check the data folder (data.root)")
    return paths, labels


class FaceImages(Dataset):
    """Images with integer labels (``-1`` where unknown).

    Indexed by ``(seed, epoch, index)`` from ``SeededSampler``, the augmentation of every sample depends on those
    numbers alone: the same in any worker process, after a resume, and with any number of workers.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | None, transform: A.Compose, size: int) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            seed, epoch, index = key
            self.transform.set_random_seed(int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]))
        else:
            index = key
        image = load_rgb(self.paths[index], self.size)
        return self.transform(image=image)["image"], self.labels[index]


class SeededSampler(Sampler):
    """Yields ``(seed, epoch, index)``: a shuffled order and augmentation seeds that depend on the epoch only.

    Under data parallelism each of ``world`` processes takes every ``world``-th index of the same order, so the
    union of the processes' k-th batches is the single-process k-th batch. ``skip`` resumes inside an epoch.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _shard_size(self) -> int:
        return -(-self.length // self.world)

    def __len__(self) -> int:
        return self._shard_size() - self.skip

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        padded = self._shard_size() * self.world
        if padded > self.length:  # every process gets as many samples (repeats a few, as DistributedSampler does)
            order = torch.cat([order, order[: padded - self.length]])
        shard = order[self.rank :: self.world][self.skip :]
        return ((self.seed, self.epoch, int(i)) for i in shard)
