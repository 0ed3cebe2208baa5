"""Datasets over competition folders, and a sampler that makes augmentation reproducible per sample."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..errors import UserError
from .layout import LABELS_FILE, list_classes, list_images, read_labels

logger = logging.getLogger(__name__)

# What a broken file raises while decoding: PIL's UnidentifiedImageError and "truncated" errors are OSErrors;
# corrupt headers raise SyntaxError or ValueError in some plug-ins.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """Decode an image as RGB uint8 (HWC); JPEGs bigger than ``size`` are decoded at reduced scale (draft mode).

    Greyscale, RGBA, CMYK, palette and 16-bit images all become 8-bit RGB (16-bit values are scaled, not clipped).
    """
    with Image.open(path) as img:
        if size and img.format == "JPEG":
            img.draft("RGB", (size, size))
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            values = np.asarray(img, dtype=np.float32)
            if img.mode == "F" and values.max() <= 1.0:
                values = values * 255.0  # floats in [0, 1]
            elif img.mode.startswith("I;16") or values.max() > 255:
                values = values / 257.0  # 16-bit: 65535 -> 255
            grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return np.asarray(img.convert("RGB"))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """A transform's uint8 HWC output as a tensor over writable, contiguous memory.

    A pipeline that changes nothing may return its input, which can be a read-only view of a decoded file.
    """
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image, order="C")
    return torch.from_numpy(image)


def image_folder(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """Paths and class indices of a folder-per-identity split, indexed by ``classes`` (the train folder order)."""
    index = {name: i for i, name in enumerate(classes)}
    if (folder / LABELS_FILE).is_file():
        return labelled_split(folder, index)
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


def labelled_split(folder: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Paths and class indices of an S25-on split: ``folder/labels.txt`` lists ``<image_file> <class_id>``.

    ``index`` maps a class (the run's class list, the authority for what an index means) to its index.
    """
    items = read_labels(folder)
    strangers = sorted({class_id for _, class_id in items if class_id not in index}, key=int)
    if strangers:
        raise UserError(
            f"{folder / LABELS_FILE} has {len(strangers)} class ids that are not in the training classes "
            f"(e.g. {strangers[0]}): train and dev must come from the same competition"
        )
    if not items:
        raise UserError(f"{folder / LABELS_FILE} lists no images: check the data folder (data.root)")
    return [folder / rel for rel, _ in items], [index[identity] for _, identity in items]


class FaceImages(Dataset):
    """Images as uint8 tensors (height x width x 3; ``BatchToModel`` normalises batches) with integer labels.

    Labels are ``-1`` where unknown.

    Indexed by ``(seed, epoch, index)`` from ``SeededSampler``, the augmentation of every sample depends on those
    numbers alone: the same in any worker process, after a resume, and with any number of workers.

    A file that cannot be decoded is skipped: the sample at the next readable index takes its place (with the
    augmentation seed of the original position, so this stays deterministic), one warning line is printed by the
    process that hits it, and its path is added to ``bad`` (per process: worker processes keep their own sets).
    With ``cache`` (a ``facenext.data.cache.DecodedCache``), images come from the memory-mapped decoded cache.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | None,
        transform: A.Compose,
        size: int,
        cache: Any = None,
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.size = size
        self.cache = cache
        self.bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            seed, epoch, index = key
            state = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
            # One pair of generators shared by every transform: seeding each transform separately costs more than
            # some of the transforms themselves.
            self.transform.set_random_state(np.random.default_rng(state), random.Random(state))
        else:
            index = key
        for offset in range(len(self.paths)):
            i = (index + offset) % len(self.paths)
            image = self._decode(i)
            if image is not None:
                return image_tensor(self.transform(image=image)["image"]), self.labels[i]
        raise UserError(f"none of the {len(self.paths)} images (e.g. {self.paths[0]}) can be decoded")

    def _decode(self, index: int) -> np.ndarray | None:
        path = self.paths[index]
        if path in self.bad:
            return None
        if self.cache is not None:
            image = self.cache.get(index)
            if image is not None:
                return image
            error: Exception | str = "unreadable when the decoded cache was built"
        else:
            try:
                return load_rgb(path, self.size)
            except DECODE_ERRORS as e:
                error = e
        self.bad.add(path)
        logger.warning(f"facenext: warning: skipping unreadable image {path} ({error})")
        return None


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
        # A resume may skip past the shard's end: a stop on the last batch of an epoch whose set is smaller than one
        # batch (no batch dropped), or a position from more processes, whose padded shards held one batch more.
        return max(0, self._shard_size() - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        padded = self._shard_size() * self.world
        if padded > self.length:  # every process gets as many samples (repeats a few, as DistributedSampler does)
            order = torch.cat([order, order[: padded - self.length]])
        shard = order[self.rank :: self.world][self.skip :]
        return ((self.seed, self.epoch, int(i)) for i in shard)
