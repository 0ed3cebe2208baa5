"""The training loop: one run folder per config, resumable by re-running the same command.

A run never loses more than ``train.recovery_minutes`` of work: ``last.pt`` is written at every epoch end and
``recovery.pt`` inside long epochs, each atomically, with everything needed to continue bit for bit: weights, EMA,
optimizer, scaler, position in the epoch and the random number generators.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, budget_seconds, config_changes, config_from_dict
from ..data.datasets import FaceImages, SeededSampler, image_folder
from ..data.device_augment import DeviceAugmentImages, batch_to_model, choose_augment_device
from ..data.layout import LABELS_FILE, Layout, find_layout, list_classes, refuse_label_problems
from ..data.transforms import BatchToModel, eval_transform, train_transform
from ..device import amp_dtype, autocast, describe_device, precision_name, resolve_device
from ..errors import UserError
from ..losses import build_loss, describe, resolve_config
from ..models import count_parameters, embedding_size, model_from_config
from ..run import RunDir
from ..scoring import TermScorer
from .budget import BudgetPlanner, duration_text
from .curves import ExperimentLogger, plot_curves
from .distributed import (
    DistContext,
    all_gather,
    all_max_,
    all_sum,
    any_rank,
    any_rank_on_host,
    barrier,
    init_distributed,
)
from .meters import StepMeter, sum_dtype
from .skips import LossScaler, RunningStats, poisoned, update_ema

logger = logging.getLogger(__name__)

# The first eight columns are the documented contract; later ones are additions.
METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "lr", "images_per_s", "epoch_s",
    "ema_dev_acc", "skipped_steps", "dev_eer", "dev_score", "non_finite_loss_steps", "overflow_steps", "loss_scale",
]  # fmt: skip
KAGGLE_TIME_LIMIT_H = 11.5  # Kaggle notebook sessions end after 12 hours
# A run stops when more than this share of an epoch's optimizer steps are skipped, once they number
# train.max_bad_steps: such a run no longer trains as configured, even without a long run of bad steps.
MAX_SKIPPED_SHARE = 0.25
# Under fp16 the scale only falls on overflows: below 1, the gradients overflow fp16 even unscaled. The run has
# diverged, and finite steps would soon round to zero.
MIN_LOSS_SCALE = 1.0

# The cuBLAS workspace settings torch accepts as deterministic (at::Context::checkCuBLASConfigDeterministic).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def deterministic_cublas() -> None:
    """Deterministic matrix products on CUDA need ``CUBLAS_WORKSPACE_CONFIG`` set before the first cuBLAS handle is
    made; without it torch (warn_only) only warns, and results vary from run to run. Set it when absent; refuse a
    value that would undo ``train.deterministic`` (on any device, so a config behaves alike on every machine)."""
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    elif value not in CUBLAS_DETERMINISTIC:
        raise UserError(
            f"train.deterministic needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_DETERMINISTIC[0]} (or "
            f"{CUBLAS_DETERMINISTIC[1]}) for deterministic CUDA matrix products, but it is {value!r}: unset it "
            f"(facenext then sets {CUBLAS_DETERMINISTIC[0]}) or set it to {CUBLAS_DETERMINISTIC[0]}"
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        deterministic_cublas()  # the Trainer seeds before anything touches CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


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


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's split: no weight decay on norms, biases, layer scales (1-D) and what ``model.no_weight_decay()`` names
    (a ViT's position embedding). Always two groups, decayed first, as every checkpoint's optimizer state has them
    (timm's function leaves empty groups out and makes one group when the decay is 0)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=skip)  # any decay > 0: the split
    split = {g["weight_decay"] > 0: g["params"] for g in groups}
    return [
        {"params": split.get(True, []), "weight_decay": weight_decay},
        {"params": split.get(False, []), "weight_decay": 0.0},
    ]


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int, epochs: int | None = None
) -> Scheduler:
    """Schedules stepped per optimizer step (``step_update``), so warm-up and decay are smooth at any epoch count.

    ``epochs`` is the length planned (``train.budget``'s plan; default ``train.epochs``): the cosine reaches min_lr
    at its last step, and multistep milestones, written for ``train.epochs``, scale in proportion. Warm-up keeps its
    length. Building again for another length at the same step gives that length's curve from there on."""
    t = config.train
    epochs = epochs or t.epochs
    warmup = int(t.warmup_epochs * steps_per_epoch)
    if t.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, epochs * steps_per_epoch - warmup),
            lr_min=t.min_lr,
            warmup_t=warmup,
            warmup_lr_init=t.min_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    if t.schedule == "multistep":
        # Milestone m takes effect at the first step of epoch m (0-based), warm-up included, as torch's MultiStepLR
        # stepped per epoch does. timm counts from the end of warm-up (warmup_prefix) and applies a decay at
        # t + 1 >= decay_t, hence the prefix off and the +1.
        return MultiStepLRScheduler(
            optimizer,
            decay_t=[round(m * steps_per_epoch * epochs / t.epochs) + 1 for m in t.milestones],
            decay_rate=t.gamma,
            warmup_t=warmup,
            warmup_lr_init=t.min_lr,
            warmup_prefix=False,
            t_in_epochs=False,
        )
    raise UserError(f"unknown schedule {t.schedule!r} (train.schedule): use cosine or multistep")


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
    try:
        on = device or torch.device("cpu")
        where, note = choose_augment_device(d.augment_device, d.augment, on, paths, size, d.mean, recorded)
        where = agree(where) if agree is not None else where
        train_tf = train_transform(d.augment, size, d.mean, on_device=where == "gpu", erase=d.erase)
    except ValueError as e:
        raise UserError(f"{e} (data.augment, data.augment_device)") from None
    train = (DeviceAugmentImages if where == "gpu" else FaceImages)(paths, labels, train_tf, size)
    dev = None
    if layout.dev is not None:
        dev = FaceImages(*image_folder(layout.dev, classes), eval_transform(size), size)
    if d.cache:  # decoded once into memory-mapped uint8 arrays; rebuilt when the files change
        attach_caches([train, dev], d.cache_dir, ctx or DistContext())
    return Data(layout, classes, train, dev, note, where)


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


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, to_model: BatchToModel, dtype: torch.dtype | None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=sum_dtype(to_model.device), device=to_model.device)  # read once, at the end
    for images, labels in loader:
        images = to_model(images)
        labels = labels.to(to_model.device, non_blocking=True)
        with autocast(to_model.device, dtype):
            logits = model(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += len(labels)
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators (CUDA: only the training device's), as ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore ``rng_state``'s output. Tensors go back to the CPU first: torch only accepts a CPU ByteTensor, and a
    checkpoint loaded with a GPU ``map_location`` would hand over CUDA tensors."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # written before 0.2: every visible GPU's state, by index
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


def run_environment(device: torch.device, dtype: torch.dtype | None, world: int) -> dict[str, Any]:
    """What a checkpoint was written with, so that a resume elsewhere can say what changed."""
    import timm

    from .. import __version__

    return {
        "device": describe_device(device),
        "precision": precision_name(dtype),
        "processes": world,
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "timm": timm.__version__,
        "facenext": __version__,
    }


def environment_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    if not saved:
        return []
    return [f"{key} {saved[key]} -> {value}" for key, value in current.items() if saved.get(key, value) != value]


# How an optimizer computes its step, not what: chosen for the device at hand, never taken from a checkpoint.
OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def with_implementation(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``saved`` (an optimizer state dict) with ``optimizer``'s implementation flags in each group. A run trained with
    the non-fused AdamW (MPS, older torch) would otherwise turn this one non-fused while the GradScaler, which sees a
    fused optimizer, passes it ``grad_scale``: AdamW asserts. Loading through the fused flags also moves the step
    counts where the fused kernel wants them (float32 on the parameters' device)."""
    ours = optimizer.state_dict()["param_groups"]
    groups = [
        {**group, **{k: own[k] for k in OPTIMIZER_IMPLEMENTATION if k in own}}
        for group, own in zip(saved["param_groups"], ours, strict=False)
    ]
    return {**saved, "param_groups": groups}


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> LossScaler:
    """fp16 needs loss scaling. In bf16 and fp32 the scale stays 1 (``update(1.0)``) and the scaler only does
    what it does for fp16 too: skip a step whose gradients are not finite, decided on the device."""
    if dtype == torch.float16:
        return LossScaler(device.type)
    return LossScaler(device.type, init_scale=1.0)


def no_skips() -> dict[str, int]:
    """Optimizer steps skipped, by cause: a non-finite loss in the group, or non-finite gradients of finite losses
    (an fp16 overflow)."""
    return {"non_finite": 0, "overflow": 0}


def skip_counts(saved: int | dict[str, int]) -> dict[str, int]:
    """``no_skips``'s counts from a checkpoint; older ones hold one number, of non-finite losses."""
    return {**no_skips(), **saved} if isinstance(saved, dict) else {**no_skips(), "non_finite": saved}


def all_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


class StopRequest:
    """Turns SIGTERM (Kaggle, schedulers, `kill`) and the time limit into a clean stop with a checkpoint."""

    def __init__(self, time_limit_h: float | None) -> None:
        self.deadline = time.monotonic() + time_limit_h * 3600 if time_limit_h else None
        self.signalled = False
        self.previous = None

    def __enter__(self) -> StopRequest:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self.previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.signalled = True

    def reason(self) -> str | None:
        if self.signalled:
            return "SIGTERM"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "time limit"
        return None


def default_time_limit(config: Config) -> float | None:
    if config.train.time_limit is not None:
        return config.train.time_limit
    return KAGGLE_TIME_LIMIT_H if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") else None


class Trainer:
    """Owns the model, optimizer and schedule of one run, and its folder on disk."""

    def __init__(self, config: Config, run_dir: Path, device: torch.device | None = None) -> None:
        self.config, self.run_dir, self.run = config, run_dir, RunDir(run_dir)
        t = config.train
        self.budget = BudgetPlanner(budget_seconds(t.budget), t.epochs)
        self.replan_on_start = False  # a resume with another budget or cap re-plans before its first epoch
        self.ctx, self.device = init_distributed(device or resolve_device(t.device))
        seed_everything(t.seed, t.deterministic)
        self.data = load_data(
            config, self.device, self._recorded_augment_device(), self._agree_augment_device, self.ctx
        )
        num_classes = len(self.data.classes)
        # Nulls become the values this run trains with, so that config.yaml (and a resume's comparison) records them;
        # so does where augmentation runs, which data.augment_device=auto chooses by a timing.
        config = replace(config, data=replace(config.data, augment_device=self.data.augment_device))
        config = self.config = resolve_config(config, num_classes, embedding_size(config))
        t = config.train
        self.model = model_from_config(config, num_classes).to(self.device)
        note = describe(config, num_classes, embedding_size(config))
        if note and self.ctx.is_main:
            logger.info(note)
        if self.ctx.rank:
            # Every process builds the same initial model (DDP checks it), then draws its own drop-path masks and
            # mixes its own batches, as timm seeds with seed + rank.
            seed_everything(t.seed + self.ctx.rank, t.deterministic)
        if t.init_from:
            self._init_from(Path(t.init_from))
        self.channels_last = t.channels_last and self.device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        d = config.data
        self.to_model = batch_to_model(self.data.train, d.mean, d.std, self.device, self.channels_last)
        if self.data.augment_note and self.ctx.is_main:
            logger.info(self.data.augment_note)
        self.ema = ModelEmaV3(self.model, decay=t.ema_decay, use_warmup=t.ema_warmup) if t.ema else None
        self.dtype = amp_dtype(self.device, t.amp)
        self.scaler = grad_scaler(self.device, self.dtype)
        # The fused kernel takes the scaler's verdict on the device: skipping a step costs no synchronisation.
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, t.weight_decay), lr=t.lr, fused=fused)
        self.step_model = self._wrap(self.model)
        self.running_stats = RunningStats(self.model)  # put back when a step is skipped

        if t.batch_size % self.ctx.world:
            raise UserError(f"train.batch_size {t.batch_size} must be divisible by the {self.ctx.world} processes")
        self.batch = t.batch_size // self.ctx.world
        self.mixup = self._mixup(num_classes)
        self.criterion = self._build_loss()
        self.train_loader = make_loader(self.data.train, config, self.device, True, self.batch, self.ctx)
        self.dev_loader = (
            make_loader(self.data.dev, config, self.device, False, self.batch * 2, DistContext())
            if self.data.dev
            else None
        )
        self.batches_per_epoch = len(self.train_loader)
        # The last accumulation group of an epoch may be short; it is stepped too (see _group_size).
        self.steps_per_epoch = -(-self.batches_per_epoch // t.accum_steps)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.schedule_epochs = t.epochs  # the length the scheduler was built for
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        # best_acc holds the best dev score in the term's own metric (facenext.scoring): accuracy for F23-style
        # terms, 1 - EER for pair terms, the combined score for F26
        self.scorer = TermScorer(self.data.layout, config)
        self.best_acc, self.best_source, self.history, self.top = -1.0, "", [], []
        self.epoch_stats = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, count, seconds: carried by recovery files
        self.bad_steps = 0  # optimizer steps with a non-finite loss in a row, now
        self.skipped = no_skips()  # optimizer steps skipped in this epoch, by cause
        self.meter = StepMeter(self.device)  # the same sums since the last read, on the device
        self.epoch_started = time.perf_counter()
        self.environment = run_environment(self.device, self.dtype, self.ctx.world)
        self.last_recovery = time.monotonic()

    def _recorded_augment_device(self) -> str | None:
        """Where the run being resumed augments (its config records the choice); None for a new run, for a run from
        before the choice was recorded, and when data.augment_device is not auto."""
        if self.config.data.augment_device != "auto":
            return None
        state = self._latest_checkpoint(peek=True)
        return ((state or {}).get("config") or {}).get("data", {}).get("augment_device")

    def _agree_augment_device(self, where: str) -> str:
        """Process 0's augmentation device, for every process: each times its own workers, and timings differ."""
        if not self.ctx.enabled:
            return where
        gpu = all_sum([float(where == "gpu") if self.ctx.is_main else 0.0], self.ctx, self.device)[0]
        return "gpu" if gpu else "cpu"

    def _wrap(self, model: nn.Module) -> nn.Module:
        t = self.config.train
        if self.ctx.enabled:
            if t.sync_bn:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if t.compile else model

    def _mixup(self, num_classes: int) -> Mixup | None:
        t = self.config.train
        if t.mixup <= 0 and t.cutmix <= 0:
            return None
        if self.batch % 2:
            raise UserError(f"mixup/cutmix need an even batch per process, got {self.batch}: change train.batch_size")
        return Mixup(
            mixup_alpha=t.mixup,
            cutmix_alpha=t.cutmix,
            prob=t.mix_prob,
            label_smoothing=t.label_smoothing,
            num_classes=num_classes,
        )

    def _init_from(self, run: Path) -> None:
        """Start from another run's weights (the second stage of a two-stage recipe); the classifier's rows are taken
        only for the same identities in the same order, else left freshly initialised.

        A cosine classifier's centres start from a cross-entropy classifier's rows (both C x D, ``head.fc.weight``):
        each row already points where its class's embeddings score highest, a far better start than random centres,
        which would first drag the embeddings around. The linear classifier's bias has no counterpart and is dropped.
        """
        path = RunDir(run).weights_file("best") if run.is_dir() else run
        checkpoint = load_checkpoint(path)
        state, own = checkpoint["model"], self.model.state_dict()
        compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        same_classes = checkpoint.get("classes") in (None, self.data.classes)
        if not same_classes:
            compatible = {k: v for k, v in compatible.items() if not k.startswith("head.fc.")}
        if not compatible:
            raise UserError(f"{path} shares no weights with model {self.config.model.name}: check train.init_from")
        self.model.load_state_dict(compatible, strict=False)
        if self.ctx.is_main:
            logger.info(f"initialised {len(compatible)} of {len(own)} tensors from {path}")
            if "head.fc.weight" in compatible and self.config.model.classifier == "cosine":
                logger.info("the cosine classifier's class centres start from that run's classifier rows")
            elif not same_classes:
                logger.info("the classifier starts afresh: that run was trained on other identities")

    # --- run folder -------------------------------------------------------------------------------------------
    def state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resume needs; ``rng`` holds every process's generators (``gather_rng``)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "budget": self.budget.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch_in_epoch,
            "step": self.step,
            "epoch_stats": list(self.epoch_stats),
            "skipped": self.skipped,
            "bad_run": self.bad_steps,
            "best_acc": self.best_acc,
            "best_source": self.best_source,
            "history": self.history,
            "top": self.top,
            "rng": rng,
            "environment": self.environment,
            "config": self.config.to_dict(),
            "classes": self.data.classes,
        }

    def gather_rng(self) -> list[dict[str, Any]]:
        """Every process's generators, in rank order; every process must call it."""
        return all_gather(rng_state(self.device), self.ctx)

    def _latest_checkpoint(self, peek: bool = False) -> dict[str, Any] | None:
        """The most advanced readable checkpoint; a damaged one is reported and the next one used. ``peek``: tensors
        are memory-mapped, not read, and nothing is reported (resume() reads and reports)."""
        states = []
        for name in ("recovery.pt", "last.pt", "last.pt.prev"):
            path = self.run_dir / name
            if not path.exists():
                continue
            try:
                # Always to the CPU: RNG states must come back there, and load_state_dict moves the rest.
                states.append(load_checkpoint(path, "cpu", mmap=peek))
            except UserError as e:
                if not peek:
                    logger.warning(f"warning: skipping {path}: {e}")
        return max(states, key=lambda s: (s["epoch"], s["batch"]), default=None)

    def resume(self) -> bool:
        """Continue from the run folder's latest checkpoint; refuse one that belongs to another config."""
        state = self._latest_checkpoint()
        if state is None:
            if (self.run_dir / "last.pt").exists():
                raise UserError(f"no readable checkpoint in {self.run_dir}: delete the folder to start again")
            return False
        # Through today's defaults: a key added since the checkpoint was written is not a different config.
        try:
            saved_config = config_from_dict(state["config"])
            # Runs written before the margin defaults recorded values that do nothing (a linear classifier's scale).
            saved = resolve_config(saved_config, len(self.data.classes), embedding_size(saved_config), strict=False)
            saved = saved.to_dict()
        except UserError:
            saved = state["config"]  # a key that no longer exists: certainly another config
        if saved.get("data", {}).get("augment_device") == "auto":  # written before the choice was recorded
            saved = {**saved, "data": {**saved["data"], "augment_device": self.config.data.augment_device}}
        # Settings that change the result refuse the resume; operational ones (where the data is, workers, device,
        # time limit, the planned length, ...) may change, and are printed below.
        settings = config_changes(saved, self.config.to_dict())
        different = [change.key for change in settings if not change.operational]
        if different:
            raise UserError(
                f"{self.run_dir} holds a run with a different config ({', '.join(different)}): pass "
                f"--out <new folder> or delete {self.run_dir}"
            )
        if state["classes"] != self.data.classes:
            raise UserError(f"{self.run_dir} was trained on other identities than {self.data.layout.train}")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(with_implementation(state["optimizer"], self.optimizer))
        # A scale belongs to its precision (a bf16 run's is 1); runs before 0.2 saved an empty one for bf16/fp32.
        saved_precision = (state.get("environment") or {}).get("precision")
        if state["scaler"] and saved_precision in (None, self.environment["precision"]):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch"], state["step"]
        self._restore_plan(state)
        self.epoch_stats, self.skipped = list(state["epoch_stats"]), skip_counts(state["skipped"])
        self.bad_steps = state.get("bad_run", 0)
        self.meter = StepMeter(self.device, self.bad_steps)
        self.best_acc, self.best_source = state["best_acc"], state["best_source"]
        self.history, self.top = list(state["history"]), [tuple(x) for x in state["top"]]
        self._restore_rng(state["rng"])
        changes = environment_changes(state.get("environment"), self.environment) + [str(c) for c in settings]
        if changes and self.ctx.is_main:
            logger.info(f"resuming with changes since the checkpoint: {', '.join(changes)}")
        return True

    def _restore_plan(self, state: dict[str, Any]) -> None:
        """The budget's time spent and plan, and the schedule for that plan. The saved scheduler is restored only when
        built for the same length and cap; otherwise (an extended run, another plan) it is built for the new one."""
        saved_cap = state["config"]["train"]["epochs"]
        saved_plan = (state.get("budget") or {}).get("planned", saved_cap)
        budget_changed = self.budget.load_state_dict(state.get("budget") or {}, at_epoch_start=state["batch"] == 0)
        self.replan_on_start = budget_changed or saved_cap != self.config.train.epochs
        self._schedule_for(self.budget.planned)
        if "scheduler" in state and (saved_cap, saved_plan) == (self.config.train.epochs, self.budget.planned):
            self.scheduler.load_state_dict(state["scheduler"])

    def _schedule_for(self, epochs: int) -> None:
        """Rebuild the LR schedule for ``epochs``, continuing at the current step: the LR moves to the new length's
        curve, the only jump a new plan implies (none during warm-up, which keeps its length)."""
        if epochs == self.schedule_epochs:
            return
        self.scheduler = build_scheduler(self.optimizer, self.config, self.steps_per_epoch, epochs)
        self.scheduler.step_update(self.step)
        self.schedule_epochs = epochs

    def _plan(self, change_from: str, train_s: float | None = None) -> None:
        """Re-plan (``change_from``: "epoch" at an epoch end, "resume" before a resumed run's first epoch), agree on
        the plan across processes, and follow it with the schedule."""
        if change_from == "epoch":
            change = self.budget.end_epoch(self.epoch)
        else:
            change = self.budget.replan(self.epoch, extend=True)
        if self.ctx.enabled:  # each process times itself: rank 0's plan is the one all follow
            planned = all_sum([float(self.budget.planned if self.ctx.is_main else 0)], self.ctx, self.device)[0]
            self.budget.planned = round(planned)
        if change is not None and self.ctx.is_main:
            logger.info(self.budget.describe(change, train_s))
        self._schedule_for(self.budget.planned)

    def _restore_rng(self, saved: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Each process continues its own generators; with more processes than were saved the new ones are seeded
        afresh (the run then continues correctly, only not bit for bit)."""
        states = saved if isinstance(saved, list) else [saved]
        if self.ctx.rank < len(states):
            set_rng_state(states[self.ctx.rank], self.device)
        else:
            t = self.config.train
            seed_everything(t.seed + self.ctx.rank + 1_000_003 * self.step, t.deterministic)

    def write_metrics(self) -> None:
        self.run.write_metrics(self.history, METRIC_COLUMNS)

    def save_recovery(self) -> None:
        self._read_meter()
        rng = self.gather_rng()
        if self.ctx.is_main:
            save_checkpoint(self.run_dir / "recovery.pt", self.state(rng))
        self.last_recovery = time.monotonic()

    # --- loop ---------------------------------------------------------------------------------------------------
    def _build_loss(self) -> nn.Module:
        t, m = self.config.train, self.config.model  # resolved: resolve_config checked margin losses' settings
        try:
            return build_loss(t.loss, t.label_smoothing, self.mixup is not None, m.cosine_scale, t.margin)
        except ValueError as e:
            raise UserError(str(e)) from None

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits.float(), targets)

    def _optimizer_step(self) -> None:
        t = self.config.train
        # Every process skips a step whose loss was not finite on any (the gradients are averaged); all must agree
        # on why, to keep the same scale.
        non_finite = all_max_(self.meter.group_bad, self.ctx)
        if t.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
        # Skipped on the device when the gradients are not finite (a non-finite loss makes them so); self.step
        # counts the attempts, so that the schedule and the resume position never depend on a device read.
        self.scaler.step(self.optimizer)
        fp16 = self.dtype == torch.float16
        skipped = self.scaler.update_after_step(self.optimizer, non_finite, None if fp16 else 1.0)
        self.running_stats.restore_if(skipped)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            update_ema(self.ema, self.model, self.step, 1 - skipped)
        self.meter.end_step(skipped)

    def train_epoch(self, stop: StopRequest) -> str | None:
        """Train until the epoch ends (None) or a stop is requested (its reason)."""
        t = self.config.train
        self.step_model.train()
        self.train_loader.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.batch)
        interactive = sys.stderr.isatty() and self.ctx.is_main
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{self.budget.planned}",
            leave=False,
            disable=not interactive,
            initial=self.batch_in_epoch,
            total=self.batch_in_epoch + len(self.train_loader),
        )
        self.epoch_started = time.perf_counter() - self.epoch_stats[3]
        read_every = t.log_every or 50
        for images, labels in bar:
            images = self.to_model(images)
            labels = labels.to(self.device, non_blocking=True)
            targets = labels
            if self.mixup is not None:
                images, targets = self.mixup(images, labels)
            group = self._group_size(self.batch_in_epoch)
            if self.batch_in_epoch % t.accum_steps == 0:  # a group starts: what a skipped step puts back
                self.running_stats.save()
            self.batch_in_epoch += 1  # the sampler's position, which a resume continues from
            boundary = self.batch_in_epoch % t.accum_steps == 0 or self.batch_in_epoch == self.batches_per_epoch
            sync = nullcontext() if boundary or not self.ctx.enabled else self.step_model.no_sync()
            with sync:
                with autocast(self.device, self.dtype):
                    logits = self.step_model(images)
                    loss = self._loss(logits, targets)
                # Under mixup/cutmix an image is scored against its mixed target's dominant class.
                finite = self.meter.add(loss, logits, labels if self.mixup is None else targets.argmax(1))
                # No check here: a non-finite loss gets non-finite gradients, and the scaler then skips the
                # group's step on the device.
                self.scaler.scale(poisoned(loss, finite) / group).backward()
            if not boundary:
                continue
            self._optimizer_step()
            read = self.step % read_every == 0
            if read:
                self._read_meter(bar, log_line=not interactive)
            reason = self._stop_or_recover(stop)
            if reason is not None:
                return reason
        self._read_meter(bar)
        return None

    def _read_meter(self, bar: tqdm | None = None, log_line: bool = False) -> None:
        """Fold the device-side sums into the epoch's; stop the run when its steps stop counting."""
        t = self.config.train
        reading = self.meter.read()
        stats = self.epoch_stats
        stats[0] += reading.loss_sum
        stats[1] += reading.correct
        stats[2] += reading.count
        stats[3] = time.perf_counter() - self.epoch_started
        self.skipped["non_finite"] += reading.non_finite
        self.skipped["overflow"] += reading.overflow
        self.bad_steps = reading.bad_run
        problem = self._bad_steps_problem(reading.worst_run)
        if any_rank(problem is not None, self.ctx, self.device):
            fix = "lower train.lr or set train.clip_grad"
            if self.dtype == torch.float16:
                fix += " (or train in fp32: train.amp=false)"
            raise UserError(f"{problem or 'another process stopped on bad steps'}: {fix}{self._last_good()}")
        if not stats[2] or bar is None:
            return
        rate = stats[2] / max(stats[3], 1e-9)
        loss_avg, acc_avg = stats[0] / stats[2], stats[1] / stats[2]
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.3f}", lr=f"{lr:.1e}", ips=f"{rate:.0f}")
        if log_line and self.ctx.is_main and t.log_every:
            # Notebook and CI logs get a plain line now and then instead of a progress bar.
            logger.info(f"  step {self.step}  loss {loss_avg:.3f}  acc {acc_avg:.3f}  {rate:.0f} img/s")

    def _bad_steps_problem(self, worst_run: int) -> str | None:
        """Why the run must stop, read before anything is saved: ``train.max_bad_steps`` non-finite losses in a row,
        more than MAX_SKIPPED_SHARE of the epoch's steps skipped (once max_bad_steps or more), or an fp16 loss scale
        below MIN_LOSS_SCALE. Each process finds the same: the counts and the scale follow agreed verdicts."""
        t = self.config.train
        where = f"by step {self.step} (epoch {self.epoch + 1})"
        if worst_run >= t.max_bad_steps:
            return f"{t.max_bad_steps} non-finite losses in a row (train.max_bad_steps) {where}"
        steps = -(-self.batch_in_epoch // t.accum_steps)  # optimizer steps of this epoch so far
        skipped = self.skipped["non_finite"] + self.skipped["overflow"]
        if skipped >= t.max_bad_steps and skipped > MAX_SKIPPED_SHARE * steps:
            return (
                f"{skipped} of the {steps} steps of epoch {self.epoch + 1} skipped ({self.skipped['non_finite']} "
                f"non-finite losses, {self.skipped['overflow']} overflows): more than {MAX_SKIPPED_SHARE:.0%}, and "
                "train.max_bad_steps or more"
            )
        if self.dtype == torch.float16 and self.scaler.get_scale() < MIN_LOSS_SCALE:
            return (
                f"the fp16 loss scale fell to {self.scaler.get_scale():.3g} {where}, so the gradients overflow fp16 "
                "even unscaled"
            )
        return None

    def _last_good(self) -> str:
        last = self.run_dir / "last.pt"
        return f"; {last} holds the last good epoch" if last.exists() else ""

    def _stop_or_recover(self, stop: StopRequest) -> str | None:
        """Save a recovery file when a stop is requested (returning its reason) or one is due, at every step. Under
        torchrun the processes agree at every step through the host group (no wait for the GPU): a SIGTERM that
        reaches any one process stops them all after the step under way, well inside the 30 s torchrun leaves
        between its SIGTERM and its SIGKILL, whatever ``train.log_every`` is."""
        t = self.config.train
        reason = stop.reason()
        due = bool(t.recovery_minutes) and time.monotonic() - self.last_recovery > t.recovery_minutes * 60
        signalled, late, due = any_rank_on_host([reason == "SIGTERM", reason == "time limit", due], self.ctx)
        reason = "SIGTERM" if signalled else "time limit" if late else None
        if reason is not None or due:
            self.save_recovery()
        return reason

    def _group_size(self, batch: int) -> int:
        """Micro-batches in the accumulation group of ``batch``: ``accum_steps``, or fewer for an epoch's last group
        (whose loss is then averaged over what it has, as timm does)."""
        accum = self.config.train.accum_steps
        start = batch - batch % accum
        return min(accum, self.batches_per_epoch - start)

    def end_epoch(self) -> dict[str, Any]:
        """Evaluate, write the epoch's row and checkpoints, and reset the per-epoch counters."""
        loss_sum, correct, count = all_sum(self.epoch_stats[:3], self.ctx, self.device)
        if not count:  # before anything is saved: there is nothing to average, and nothing was learnt
            raise UserError(
                f"every loss of epoch {self.epoch + 1} was non-finite: lower train.lr or set train.clip_grad"
                f"{self._last_good()}"
            )
        seconds = self.epoch_stats[3]
        row: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count}
        dev_loss = dev_acc = ema_acc = float("nan")
        score = ema_score = {"dev_score": float("nan")}
        if self.ctx.is_main and self.dev_loader is not None:
            dev_loss, dev_acc = evaluate(self.model, self.dev_loader, self.to_model, self.dtype)
            score = self.scorer.score(self.model, self.to_model, self.dtype, dev_acc)
            if self.ema is not None:
                ema_acc = evaluate(self.ema.module, self.dev_loader, self.to_model, self.dtype)[1]
                ema_score = self.scorer.score(self.ema.module, self.to_model, self.dtype, ema_acc)
        row.update(dev_loss=dev_loss, dev_acc=dev_acc, ema_dev_acc=ema_acc, lr=self.optimizer.param_groups[0]["lr"])
        row.update(score)
        row.update(images_per_s=count / max(seconds, 1e-9), epoch_s=seconds)
        non_finite, overflow = self.skipped["non_finite"], self.skipped["overflow"]
        row.update(skipped_steps=non_finite + overflow, non_finite_loss_steps=non_finite, overflow_steps=overflow)
        row["loss_scale"] = self.scaler.get_scale()
        self.epoch += 1
        self.batch_in_epoch, self.epoch_stats, self.skipped = 0, [0.0, 0.0, 0.0, 0.0], no_skips()
        self.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
        # The budget measures the epoch and re-plans before the checkpoints, so that last.pt holds both (this
        # epoch's checkpoint time falls into the next epoch's).
        self._plan("epoch", seconds)
        rng = self.gather_rng()
        if self.ctx.is_main:
            self._save_epoch(score["dev_score"], ema_score["dev_score"], rng)
        barrier(self.ctx)
        return row

    def _save_epoch(self, dev_acc: float, ema_acc: float, rng: list[dict[str, Any]]) -> None:
        """Best and top-k first, ``last.pt`` last: a crash in between repeats the epoch, which changes nothing."""
        use_ema = self.ema is not None and ema_acc > dev_acc
        score, source = (ema_acc, "ema") if use_ema else (dev_acc, "raw")
        finite = all_finite(self.ema.module if use_ema else self.model)
        # Without a dev split there is nothing to rank by: the latest epoch is the best one.
        best = self.run.weights_file("best")
        improved = finite and (score > self.best_acc or math.isnan(score) or not best.exists())
        if improved:
            self.best_acc, self.best_source = score, source
        keep = finite and self.config.train.keep_top_k > 0 and not math.isnan(score)
        dropped = self._rank_top_k(score) if keep else []
        state = self.state(rng)
        weights = state["ema"] if use_ema else state["model"]
        if improved:
            save_checkpoint(best, {**state, "model": weights, "best_source": source})
        if keep and any(name == self._top_name() for _, _, name in self.top):
            meta = {"epoch": self.epoch, "dev_acc": score, "config": state["config"], "classes": state["classes"]}
            save_checkpoint(self.run_dir / "top" / self._top_name(), {"model": weights, **meta})
        for name in dropped:
            (self.run_dir / "top" / name).unlink(missing_ok=True)
        self.write_metrics()
        save_checkpoint(self.run_dir / "last.pt", state, keep_previous=True)
        (self.run_dir / "recovery.pt").unlink(missing_ok=True)

    def _top_name(self) -> str:
        return f"epoch_{self.epoch:04d}.pt"

    def _rank_top_k(self, score: float) -> list[str]:
        """Add this epoch to the k best kept for checkpoint averaging; return the names that fell out."""
        ranked = sorted([*self.top, (score, self.epoch, self._top_name())], key=lambda x: (-x[0], -x[1]))
        k = self.config.train.keep_top_k
        self.top = ranked[:k]
        return [name for _, _, name in ranked[k:]]

    def _print_epoch(self, row: dict[str, Any]) -> None:
        ema = f" (EMA {row['ema_dev_acc']:.3f})" if self.ema is not None else ""
        skipped = ""
        if row["skipped_steps"]:
            skipped = (
                f"  {row['skipped_steps']} steps skipped ({row['non_finite_loss_steps']} non-finite losses, "
                f"{row['overflow_steps']} overflows)"
            )
        if "dev_eer" in row:
            skipped += f"  dev EER {row['dev_eer']:.4f} score {row['dev_score']:.4f}"
        logger.info(
            f"epoch {row['epoch']:>3}/{self.budget.planned}  train loss {row['train_loss']:.3f} "
            f"acc {row['train_acc']:.3f}  dev loss {row['dev_loss']:.3f} acc {row['dev_acc']:.3f}{ema}  "
            f"lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {row['epoch_s']:.1f}s{skipped}",
        )

    def fit(self) -> dict[str, Any]:
        main = self.ctx.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.glob(".*.tmp*"):  # left by a process killed while writing
                stale.unlink(missing_ok=True)
        barrier(self.ctx)
        resumed = self.resume()
        t = self.config.train
        tracker = ExperimentLogger(t.log_to, self.run_dir, self.config.to_dict()) if main else None
        if main:
            self.run.write_config(self.config)
            self.run.write_classes(self.data.classes)
            self.run.write_fingerprint(self.data.classes, len(self.data.train))
            where = f"epoch {self.epoch + 1}"
            if self.batch_in_epoch >= self.batches_per_epoch:
                where = f"the end of {where}"
            elif self.batch_in_epoch:
                where += f", batch {self.batch_in_epoch + 1}"
            logger.info(
                f"{'resuming' if resumed else 'training'} {self.config.model.name} "
                f"({count_parameters(self.model) / 1e6:.2f} M parameters) on {self.environment['device']}"
                f"{f' x{self.ctx.world}' if self.ctx.enabled else ''} in {self._precision_text()}: "
                f"{len(self.data.classes)} identities, "
                f"{len(self.data.train)} train images, {where} of {self.budget.planned}{self._budget_note()}"
            )
        if self.replan_on_start:
            self._plan("resume")
        self.scheduler.step_update(self.step)
        stopped = None
        self.budget.start()
        with StopRequest(default_time_limit(self.config)) as stop:
            while self.epoch < self.budget.planned and stopped is None:
                stopped = self.train_epoch(stop)
                if stopped is None:
                    row = self.end_epoch()
                    if main:
                        self._print_epoch(row)
                        tracker.log(row)
        summary = self.summary(stopped)
        if main:
            if stopped:
                where = f"epoch {self.epoch + 1}, step {self.step}"
                logger.info(f"stopped ({stopped}) at {where}: re-run the same command to resume")
            elif self.history and t.plot:
                plot_curves(self.history, self.run_dir / "curves.png")
            self.run.write_summary(summary)
            tracker.close()
        return summary

    def _budget_note(self) -> str:
        budget = self.budget.budget_s
        if budget is None:
            return ""
        spent = self.budget.spent()
        note = f"; budget {duration_text(budget)}"
        note += f", {duration_text(spent)} spent" if spent else " (epochs planned after the first)"
        limit = default_time_limit(self.config)
        if limit is not None and limit * 3600 < budget - spent:
            note += f"; the time limit ({limit:g} h) stops this session first: resume to finish the schedule"
        return note

    def _precision_text(self) -> str:
        if self.dtype == torch.bfloat16:
            return "bf16 autocast (native on this card)"
        if self.dtype == torch.float16:
            return "fp16 autocast with loss scaling (no native bf16 on this card)"
        return "fp32" + (" (mixed precision is for CUDA GPUs)" if self.config.train.amp else "")

    def summary(self, stopped: str | None = None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "run": str(self.run_dir),
            "model": self.config.model.name,
            "parameters": count_parameters(self.model),
            "classes": len(self.data.classes),
            "epochs": self.epoch,
            "complete": self.epoch >= self.budget.planned,
            "stopped": stopped,
            "best_dev_acc": self.best_acc,
            "best_source": self.best_source,
            **self.scorer.summary(self.history, self.best_acc),
            "last_dev_acc": last.get("dev_acc"),
            "train_s": round(sum(r["epoch_s"] for r in self.history), 2),
            "device": str(self.device),
            "device_name": self.environment["device"],
            "precision": self.environment["precision"],
            "processes": self.ctx.world,
            # With timm's warm-up the decay grows with the step count and may never reach train.ema_decay.
            "ema_decay_reached": round(self.ema.get_decay(self.step), 6) if self.ema else None,
            "budget": self.budget.summary(self.epoch >= self.budget.planned),
        }


def train(config: Config, run_dir: str | Path, device: torch.device | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir`` and return its summary."""
    return Trainer(config, Path(run_dir), device).fit()
