"""The training run's data: its splits as datasets (a decoded cache attached when asked) and their loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data.datasets import FaceImages, SeededSampler, image_folder
from ..data.device_augment import DeviceAugmentImages, choose_augment_device
from ..data.layout import LABELS_FILE, Layout, find_layout, list_classes, refuse_label_problems
from ..data.transforms import data_train_transform, eval_transform
from ..errors import UserError
from .distributed import DistContext, barrier

logger = logging.getLogger(__name__)


@dataclass
class Data:
    layout: Layout
    classes: list[str]
    train: FaceImages
    dev: FaceImages | None
    augment_note: str = ""  # where augmentation runs and why, when worth saying
    augment_device: str = "cpu"  # where it runs: cpu (the workers) or gpu (the training device)


def load_data(
    config: Config,
    device: torch.device | None = None,
    recorded: str | None = None,
    agree: Callable[[str], str] | None = None,
    ctx: DistContext | None = None,
) -> Data:
    """The splits; the training set defers augmentation to ``device`` when ``data.augment_device`` says so.

    ``auto`` chooses by a timing, which another session or process could answer differently: ``recorded``, the
    choice a run being resumed made, is kept instead, and ``agree`` turns this process's choice into the one every
    process follows (called by every process). Under torchrun (``ctx``) one process per machine decodes the cache
    (``data.cache``) for all."""
    layout = find_layout(config.data.root, config.data.term)
    for split in (layout.train, layout.dev):
        if split is not None and (split / LABELS_FILE).is_file():
            refuse_label_problems(split, layout.term.num_classes)
    classes = list_classes(layout.train)
    if len(classes) < 2:
        raise UserError(f"{layout.train} has {len(classes)} identity folders: classification needs at least 2")
    size, d = config.data.image_size, config.data
    paths, labels = image_folder(layout.train, classes)
    if d.train_on_dev:
        paths, labels = with_dev_photos(layout, classes, paths, labels)
    try:
        on = device or torch.device("cpu")
        where, note = choose_augment_device(d.augment_device, d.augment, on, paths, size, d.mean, recorded)
        where = agree(where) if agree is not None else where
        train_tf = data_train_transform(d, on_device=where == "gpu")
    except ValueError as e:
        raise UserError(f"{e} (data.augment, data.augment_device)") from None
    train = (DeviceAugmentImages if where == "gpu" else FaceImages)(paths, labels, train_tf, size)
    dev = None
    if layout.dev is not None:
        dev = FaceImages(*image_folder(layout.dev, classes), eval_transform(size), size)
    if d.cache:  # decoded once into memory-mapped uint8 arrays; rebuilt when the files change
        attach_caches([train, dev], d.cache_dir, ctx or DistContext())
    return Data(layout, classes, train, dev, note, where)


def with_dev_photos(
    layout: Layout, classes: list[str], paths: list[Path], labels: list[int]
) -> tuple[list[Path], list[int]]:
    """The training photos joined by the dev split's (``data.train_on_dev``); refused without a dev split."""
    if layout.dev is None:
        raise UserError(f"data.train_on_dev=true, and {layout.root} has no dev split to train on: drop it")
    dev_paths, dev_labels = image_folder(layout.dev, classes)
    logger.info(
        f"training on {len(dev_paths)} dev photos too (data.train_on_dev): dev accuracy counts photos trained on"
    )
    return [*paths, *dev_paths], [*labels, *dev_labels]


def attach_caches(datasets: list[FaceImages | None], cache_dir: str | None, ctx: DistContext) -> None:
    """Each split's decoded cache, decoded once per machine: local rank 0 builds (or checks) it while the other
    processes wait, then they map its files. Were each to decode for itself, every process would run a decoder on the
    same few cores (Kaggle's 4 for two GPUs) and write the same arrays side by side."""
    from ..data.cache import attach_cache

    decodes = ctx.local_rank == 0
    if not decodes:
        barrier(ctx, on_host=True)
    for dataset in datasets:
        if dataset is not None:
            attach_cache(dataset, cache_dir)
    if decodes:
        barrier(ctx, on_host=True)


def make_loader(
    dataset: FaceImages, config: Config, device: torch.device, shuffle: bool, batch_size: int, ctx: DistContext
) -> DataLoader:
    workers = config.data.num_workers
    sampler = SeededSampler(
        len(dataset), config.train.seed, shuffle, ctx.rank if shuffle else 0, ctx.world if shuffle else 1
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=shuffle and len(sampler) > batch_size,
        # A private generator: creating worker processes must not consume the global RNG, or a resumed run
        # would draw different drop-path masks than an uninterrupted one.
        generator=torch.Generator().manual_seed(config.train.seed),
        worker_init_fn=own_session,
    )


def own_session(worker_id: int) -> None:
    """A DataLoader worker leaves its parent's process group. torchrun stops a process by signalling its whole group
    (as a terminal's Ctrl-C does), and a worker killed by SIGTERM makes the training process fail with a traceback
    before it can save. The training process alone decides to stop, then shuts its workers down; a worker whose
    parent died exits on its own (torch's watchdog)."""
    if hasattr(os, "setsid"):  # POSIX
        with suppress(OSError):  # already a session leader
            os.setsid()
