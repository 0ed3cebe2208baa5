"""The training loop: one run folder per config, resumable by re-running the same command."""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, config_from_dict, save_config
from ..data.datasets import FaceImages, SeededSampler, image_folder
from ..data.layout import Layout, find_layout, list_classes
from ..data.transforms import eval_transform, train_transform
from ..device import amp_dtype, autocast, resolve_device
from ..errors import UserError
from ..models import count_parameters, create_model
from .checkpoint import load_checkpoint, save_checkpoint, write_json

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "lr", "images_per_s", "epoch_s"]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def build_model(config: Config, num_classes: int) -> nn.Module:
    m = config.model
    try:
        return create_model(
            m.name,
            num_classes=num_classes,
            dims=tuple(m.dims) if m.dims else None,
            depths=tuple(m.depths) if m.depths else None,
            drop_path_rate=m.drop_path_rate,
            drop_rate=m.drop_rate,
            embed_dim=m.embed_dim,
            init_std=m.init_std,
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"cannot build model {m.name!r}: {e}") from None


def make_loader(
    dataset: FaceImages, config: Config, device: torch.device, shuffle: bool, batch_size: int
) -> DataLoader:
    workers = config.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), config.train.seed, shuffle=shuffle),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=shuffle and len(dataset) > batch_size,
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and layer scales (every parameter with fewer than two dimensions)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int) -> Scheduler:
    """Schedules stepped per iteration (``step_update``), so warm-up and decay are smooth at any epoch count."""
    t = config.train
    warmup = int(t.warmup_epochs * steps_per_epoch)
    if t.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, t.epochs * steps_per_epoch - warmup),
            lr_min=t.min_lr,
            warmup_t=warmup,
            warmup_lr_init=t.min_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    if t.schedule == "multistep":
        return MultiStepLRScheduler(
            optimizer,
            decay_t=[m * steps_per_epoch for m in t.milestones],
            decay_rate=t.gamma,
            warmup_t=warmup,
            warmup_lr_init=t.min_lr,
            t_in_epochs=False,
        )
    raise UserError(f"unknown schedule {t.schedule!r} (train.schedule): use cosine or multistep")


@dataclass
class Data:
    layout: Layout
    classes: list[str]
    train: FaceImages
    dev: FaceImages | None


def load_data(config: Config) -> Data:
    layout = find_layout(config.data.root, config.data.term)
    classes = list_classes(layout.train)
    if len(classes) < 2:
        raise UserError(f"{layout.train} has {len(classes)} identity folders: classification needs at least 2")
    size, d = config.data.image_size, config.data
    try:
        train_tf = train_transform(d.augment, size, d.mean, d.std)
    except ValueError as e:
        raise UserError(f"{e} (data.augment)") from None
    train = FaceImages(*image_folder(layout.train, classes), train_tf, size)
    dev = None
    if layout.dev is not None:
        dev = FaceImages(*image_folder(layout.dev, classes), eval_transform(size, d.mean, d.std), size)
    return Data(layout, classes, train, dev)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None, channels_last: bool
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images = to_device(images, device, channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    return loss_sum / count, correct / count


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


class Trainer:
    """Owns the model, optimizer and schedule of one run, and its folder on disk."""

    def __init__(self, config: Config, run_dir: Path, device: torch.device | None = None) -> None:
        self.config, self.run_dir = config, run_dir
        self.device = device or resolve_device(config.train.device)
        t = config.train
        seed_everything(t.seed, t.deterministic)
        self.data = load_data(config)
        self.model = build_model(config, len(self.data.classes)).to(self.device)
        self.channels_last = t.channels_last and self.device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dtype = amp_dtype(self.device, t.amp)
        # Loss scaling is needed for fp16 only; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, t.weight_decay), lr=t.lr)
        self.train_loader = make_loader(self.data.train, config, self.device, True, t.batch_size)
        self.dev_loader = (
            make_loader(self.data.dev, config, self.device, False, t.batch_size * 2) if self.data.dev else None
        )
        self.scheduler = build_scheduler(self.optimizer, config, len(self.train_loader))
        self.epoch, self.step, self.best_acc, self.history = 0, 0, -1.0, []

    # --- run folder -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_acc": self.best_acc,
            "history": self.history,
            "config": self.config.to_dict(),
            "classes": self.data.classes,
        }

    def resume(self) -> bool:
        """Continue from ``last.pt`` when the run folder holds one; refuse if it belongs to another config."""
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path, self.device)
        saved, current = dict(state["config"]), self.config.to_dict()
        saved["train"] = {**saved["train"], "epochs": current["train"]["epochs"]}  # extending a run is allowed
        if saved != current:
            raise UserError(
                f"{self.run_dir} holds a run with a different config: pass --out <new folder> or delete {self.run_dir}"
            )
        if state["classes"] != self.data.classes:
            raise UserError(f"{self.run_dir} was trained on other identities than {self.data.layout.train}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_acc, self.history = state["best_acc"], list(state["history"])
        return True

    def write_metrics(self) -> None:
        path = self.run_dir / "metrics.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.history)

    # --- loop ---------------------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.train_loader.sampler.set_epoch(self.epoch)
        t = self.config.train
        loss_sum, correct, count, start = 0.0, 0, 0, time.perf_counter()
        interactive = sys.stderr.isatty()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{t.epochs}", leave=False, disable=not interactive)
        for images, labels in bar:
            images = to_device(images, self.device, self.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.dtype):
                logits = self.model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=t.label_smoothing)
            if not math.isfinite(loss.item()):
                raise UserError(f"training diverged (loss {loss.item()}) at step {self.step}: lower train.lr")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.scheduler.step_update(self.step)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
            if not interactive and t.log_every and self.step % t.log_every == 0:
                # Notebook and CI logs get a plain line now and then instead of a progress bar.
                rate = count / (time.perf_counter() - start)
                print(f"  step {self.step}  loss {loss_sum / count:.3f}  acc {correct / count:.3f}  {rate:.0f} img/s")
        seconds = time.perf_counter() - start
        return {"train_loss": loss_sum / count, "train_acc": correct / count, "images_per_s": count / seconds}

    def fit(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        save_config(self.config, self.run_dir / "config.yaml")
        (self.run_dir / "classes.json").write_text(json.dumps(self.data.classes))
        t = self.config.train
        print(
            f"{'resuming' if resumed else 'training'} {self.config.model.name} "
            f"({count_parameters(self.model) / 1e6:.2f} M parameters) on {self.device}"
            f"{f' with {self.dtype} autocast' if self.dtype else ''}: {len(self.data.classes)} identities, "
            f"{len(self.data.train)} train images, epoch {self.epoch + 1} of {t.epochs}"
        )
        self.scheduler.step_update(self.step)
        while self.epoch < t.epochs:
            epoch_start = time.perf_counter()
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            dev_loss, dev_acc = (
                evaluate(self.model, self.dev_loader, self.device, self.dtype, self.channels_last)
                if self.dev_loader
                else (float("nan"), float("nan"))
            )
            row.update(dev_loss=dev_loss, dev_acc=dev_acc, lr=self.optimizer.param_groups[0]["lr"])
            row["epoch_s"] = time.perf_counter() - epoch_start
            self.epoch += 1
            self.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            improved = dev_acc > self.best_acc
            if improved:
                self.best_acc = dev_acc
            state = self.state()
            save_checkpoint(self.run_dir / "last.pt", state)
            if improved or not (self.run_dir / "best.pt").exists():
                save_checkpoint(self.run_dir / "best.pt", state)
            self.write_metrics()
            print(
                f"epoch {row['epoch']:>3}/{t.epochs}  train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}  "
                f"dev loss {dev_loss:.3f} acc {dev_acc:.3f}  lr {row['lr']:.2e}  "
                f"{row['images_per_s']:.0f} img/s  {row['epoch_s']:.1f}s",
                flush=True,
            )
        summary = self.summary()
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "run": str(self.run_dir),
            "model": self.config.model.name,
            "parameters": count_parameters(self.model),
            "classes": len(self.data.classes),
            "epochs": self.epoch,
            "best_dev_acc": self.best_acc,
            "last_dev_acc": last.get("dev_acc"),
            "train_s": round(sum(r["epoch_s"] for r in self.history), 2),
            "device": str(self.device),
        }


def train(config: Config, run_dir: str | Path, device: torch.device | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir`` and return its summary."""
    return Trainer(config, Path(run_dir), device).fit()


def load_run_config(run_dir: Path) -> tuple[Config, list[str]]:
    """The resolved config and class list a run was trained with."""
    config_path, classes_path = run_dir / "config.yaml", run_dir / "classes.json"
    if not config_path.is_file() or not classes_path.is_file():
        raise UserError(f"{run_dir} is not a training run: train it first with `facenext train CONFIG --out {run_dir}`")
    return config_from_dict(yaml.safe_load(config_path.read_text())), json.loads(classes_path.read_text())
