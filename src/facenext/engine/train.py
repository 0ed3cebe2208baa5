"""The training loop: one run folder per config, resumable by re-running the same command.

``Trainer.fit`` reads top to bottom: resume, then ``train_epoch`` and ``end_epoch`` until the planned epochs are done
or a stop is requested. A run never loses more than ``train.recovery_minutes`` of work: ``last.pt`` is written at
every epoch end and ``recovery.pt`` inside long epochs, each atomically, with everything needed to continue bit for
bit: weights, EMA, optimizer, scaler, position in the epoch and the random number generators. Writing and reading
them is ``run_state.RunState``'s job.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..config import Config, budget_seconds
from ..data.device_augment import batch_to_model
from ..device import amp_dtype, autocast, resolve_device
from ..errors import UserError
from ..losses import build_loss, describe, resolve_config
from ..models import count_parameters, current_weights, embedding_size, model_from_config
from ..run import RunDir
from ..scoring import TermScorer
from .budget import BudgetPlanner
from .curves import ExperimentLogger, plot_curves
from .distributed import DistContext, all_max_, all_sum, any_rank, any_rank_on_host, barrier, init_distributed
from .evaluate import evaluate
from .loaders import load_data, make_loader
from .meters import StepMeter
from .report import budget_note, epoch_line, position_text, precision_text, stall_warning
from .run_state import RunState, recorded_augment_device, run_environment
from .schedule import build_scheduler
from .seeding import seed_everything
from .skips import RunningStats, bad_steps_problem, grad_scaler, no_skips, poisoned, update_ema
from .stop import StopRequest, default_time_limit

logger = logging.getLogger(__name__)


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


class Trainer:
    """Owns the model, optimizer and schedule of one run and trains it; ``run_state`` (a ``RunState``) keeps what the
    run has reached and the checkpoints in its folder."""

    def __init__(self, config: Config, run_dir: Path, device: torch.device | None = None) -> None:
        self.config, self.run_dir, self.run = config, run_dir, RunDir(run_dir)
        t = config.train
        self.budget = BudgetPlanner(budget_seconds(t.budget), t.epochs)
        self.ctx, self.device = init_distributed(device or resolve_device(t.device))
        seed_everything(t.seed, t.deterministic)
        self.data = load_data(
            config, self.device, recorded_augment_device(config, run_dir), self._agree_augment_device, self.ctx
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
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.scorer = TermScorer(self.data.layout, config)  # each epoch's dev score, in the term's own metric
        self.epoch_stats = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, count, seconds: carried by recovery files
        self.bad_steps = 0  # optimizer steps with a non-finite loss in a row, now
        self.skipped = no_skips()  # optimizer steps skipped in this epoch, by cause
        self.meter = StepMeter(self.device)  # the same sums since the last read, on the device
        self.epoch_started = time.perf_counter()
        self.environment = run_environment(self.device, self.dtype, self.ctx.world)
        self.run_state = RunState(self)  # the best score, history and top-k, and the checkpoints that carry them

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
        state, own = current_weights(self.model, checkpoint["model"]), self.model.state_dict()
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

    def _build_loss(self) -> nn.Module:
        t, m = self.config.train, self.config.model  # resolved: resolve_config checked margin losses' settings
        try:
            return build_loss(t.loss, t.label_smoothing, self.mixup is not None, m.cosine_scale, t.margin)
        except ValueError as e:
            raise UserError(str(e)) from None

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits.float(), targets)

    def resume(self) -> bool:
        """Continue from the run folder's latest checkpoint (``RunState.resume``); False when there is none."""
        return self.run_state.resume()

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
            where = position_text(self.epoch, self.batch_in_epoch, self.batches_per_epoch)
            logger.info(
                f"{'resuming' if resumed else 'training'} {self.config.model.name} "
                f"({count_parameters(self.model) / 1e6:.2f} M parameters) on {self.environment['device']}"
                f"{f' x{self.ctx.world}' if self.ctx.enabled else ''} in {precision_text(self.dtype, t.amp)}: "
                f"{len(self.data.classes)} identities, "
                f"{len(self.data.train)} train images, {where} of {self.budget.planned}"
                f"{budget_note(self.budget, default_time_limit(self.config))}"
            )
        if self.run_state.replan_on_start:
            self.run_state.plan("resume")
        self.scheduler.step_update(self.step)
        stopped = None
        self.budget.start()
        with StopRequest(default_time_limit(self.config)) as stop:
            while self.epoch < self.budget.planned and stopped is None:
                stopped = self.train_epoch(stop)
                if stopped is None:
                    row = self.end_epoch()
                    if main:
                        logger.info(epoch_line(row, self.budget.planned, self.ema is not None))
                        if warning := stall_warning(row, len(self.data.classes), t.loss):
                            logger.warning(warning)
                        tracker.log(row)
        summary = self.summary(stopped)
        if main:
            if stopped:
                where = f"epoch {self.epoch + 1}, step {self.step}"
                logger.info(f"stopped ({stopped}) at {where}: re-run the same command to resume")
            elif self.run_state.history and t.plot:
                plot_curves(self.run_state.history, self.run_dir / "curves.png")
            self.run.write_summary(summary)
            tracker.close()
        return summary

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
        fp16_scale = self.scaler.get_scale() if self.dtype == torch.float16 else None
        epoch_steps = -(-self.batch_in_epoch // t.accum_steps)  # optimizer steps of this epoch so far
        problem = bad_steps_problem(
            reading.worst_run, self.skipped, epoch=self.epoch + 1, step=self.step, steps=epoch_steps,
            max_bad_steps=t.max_bad_steps, fp16_scale=fp16_scale,
        )  # fmt: skip
        if any_rank(problem is not None, self.ctx, self.device):
            fix = "lower train.lr or set train.clip_grad"
            if self.dtype == torch.float16:
                fix += " (or train in fp32: train.amp=false)"
            raise UserError(f"{problem or 'another process stopped on bad steps'}: {fix}{self.run_state.last_good()}")
        if not stats[2] or bar is None:
            return
        rate = stats[2] / max(stats[3], 1e-9)
        loss_avg, acc_avg = stats[0] / stats[2], stats[1] / stats[2]
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.3f}", lr=f"{lr:.1e}", ips=f"{rate:.0f}")
        if log_line and self.ctx.is_main and t.log_every:
            # Notebook and CI logs get a plain line now and then instead of a progress bar.
            logger.info(f"  step {self.step}  loss {loss_avg:.3f}  acc {acc_avg:.3f}  {rate:.0f} img/s")

    def _stop_or_recover(self, stop: StopRequest) -> str | None:
        """Save a recovery file when a stop is requested (returning its reason) or one is due, at every step. Under
        torchrun the processes agree at every step through the host group (no wait for the GPU): a SIGTERM that
        reaches any one process stops them all after the step under way, well inside the 30 s torchrun leaves
        between its SIGTERM and its SIGKILL, whatever ``train.log_every`` is."""
        reason = stop.reason()
        due = self.run_state.recovery_due()
        signalled, late, due = any_rank_on_host([reason == "SIGTERM", reason == "time limit", due], self.ctx)
        reason = "SIGTERM" if signalled else "time limit" if late else None
        if reason is not None or due:
            self._read_meter()
            self.run_state.save_recovery()
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
                f"{self.run_state.last_good()}"
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
        self.run_state.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
        # The budget measures the epoch and re-plans before the checkpoints, so that last.pt holds both (this
        # epoch's checkpoint time falls into the next epoch's).
        self.run_state.plan("epoch", seconds)
        rng = self.run_state.gather_rng()
        if self.ctx.is_main:
            self.run_state.save_epoch(score["dev_score"], ema_score["dev_score"], rng)
        barrier(self.ctx)
        return row

    def summary(self, stopped: str | None = None) -> dict[str, Any]:
        history, best = self.run_state.history, self.run_state.best_score
        last = history[-1] if history else {}
        return {
            "run": str(self.run_dir),
            "model": self.config.model.name,
            "parameters": count_parameters(self.model),
            "classes": len(self.data.classes),
            "epochs": self.epoch,
            "complete": self.epoch >= self.budget.planned,
            "stopped": stopped,
            "best_dev_acc": best,
            "best_source": self.run_state.best_source,
            "train_on_dev": self.config.data.train_on_dev,  # then the dev numbers count photos trained on
            **self.scorer.summary(history, best),
            "last_dev_acc": last.get("dev_acc"),
            "train_s": round(sum(r["epoch_s"] for r in history), 2),
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
