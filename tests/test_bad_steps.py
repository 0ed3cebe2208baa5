"""Bad steps in fp16 and elsewhere, on the CPU: fp16 autocast with a CPU GradScaler stands in for a T4, and the
non-finite losses, batches and overflows are injected around the real trainer (its loss and its batches)."""

from __future__ import annotations

import copy
import math
import multiprocessing
import os

import pandas as pd
import pytest
import torch

from facenext.checkpoint import load_checkpoint
from facenext.config import load_config
from facenext.engine.skips import grad_scaler
from facenext.engine.stop import StopRequest
from facenext.engine.train import Trainer
from facenext.errors import UserError

from .conftest import CONFIG, free_port, train_args

NAN = float("nan")
# Each injection, by micro-batch: a NaN loss; an inf loss whose gradients are finite (an overflowed logit of another
# class does that); a finite loss whose gradients overflow fp16; a batch of NaN pixels, which BatchNorm's running
# statistics see in the forward pass.
LOSSES = {"nan": lambda loss: loss * NAN, "inf": lambda loss: loss + math.inf, "overflow": lambda loss: loss * 1e30}


def trainer(sample, tmp_path, *extra, fp16=False) -> Trainer:
    """A Trainer of the tiny model for one epoch; ``fp16``: what a T4 gets (fp16 autocast and loss scaling; slow
    channels-last on the CPU)."""
    config = load_config(CONFIG, train_args(sample, "unused", "train.epochs=1", *extra)[4:])
    trainer = Trainer(config, tmp_path / "run")
    if fp16:
        trainer.dtype = torch.float16
        trainer.scaler = grad_scaler(trainer.device, torch.float16)
    return trainer


class Injected:
    """Wraps a trainer's loss and its batches: ``plan`` maps a micro-batch (from 1) to what goes wrong in it;
    ``watch`` lists micro-batches before whose forward pass the model, EMA and scaler are copied (``seen``)."""

    def __init__(self, trainer: Trainer, plan: dict[int, str], watch: tuple[int, ...] = ()) -> None:
        self.trainer, self.plan, self.watch = trainer, plan, watch
        self.criterion, self.to_model = trainer.criterion, trainer.to_model
        self.batch, self.seen = 0, {}
        trainer.criterion, trainer.to_model = self.loss, self

    def __getattr__(self, name):  # the rest of the trainer's BatchToModel (its device)
        return getattr(self.to_model, name)

    def __call__(self, batch):
        self.batch += 1
        if self.batch in self.watch:
            t = self.trainer
            ema = t.ema.module.state_dict() if t.ema else {}
            self.seen[self.batch] = copy.deepcopy((t.model.state_dict(), ema, t.scaler.state_dict()))
        images = self.to_model(batch)
        return images * NAN if self.plan.get(self.batch) == "nan_images" else images

    def loss(self, logits, targets):
        loss = self.criterion(logits, targets)
        return LOSSES.get(self.plan.get(self.batch), lambda x: x)(loss)


def same(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_skipped_fp16_steps_leave_scale_batchnorm_ema_and_weights_as_they_were(sample, tmp_path):
    # Accumulation groups of two micro-batches: six optimizer steps, the middle four skipped, each another way.
    extra = ["train.batch_size=8", "train.accum_steps=2", "train.ema=true", "train.channels_last=false"]
    t = trainer(sample, tmp_path, *extra, fp16=True)
    assert t.batches_per_epoch == 12
    plan = {3: "nan", 4: "nan", 5: "nan_images", 6: "nan", 8: "inf", 10: "overflow"}
    injected = Injected(t, plan, watch=(3, 11))
    t.fit()
    # Between the first step and the last, nothing moved: not the weights (the inf loss was not applied either),
    # not BatchNorm's running statistics (NaN pixels went through them), not the EMA.
    (model_before, ema_before, scaler_before), (model_after, ema_after, scaler_after) = injected.seen.values()
    assert same(model_before, model_after) == [] and same(ema_before, ema_after) == []
    assert any("running_mean" in k for k in model_before)
    # Only the overflow halved the scale; it also restarted the growth count, which the clean steps advance and
    # the non-finite losses leave alone.
    assert scaler_before["scale"] == 65536.0 and scaler_before["_growth_tracker"] == 1
    assert scaler_after["scale"] == 32768.0 and scaler_after["_growth_tracker"] == 0
    assert t.scaler.state_dict()["_growth_tracker"] == 1
    row = pd.read_csv(tmp_path / "run" / "metrics.csv").iloc[0]
    counts = row[["skipped_steps", "non_finite_loss_steps", "overflow_steps", "loss_scale"]].tolist()
    assert counts == [4, 3, 1, 32768.0]  # optimizer steps, not the five non-finite micro-batches
    assert math.isfinite(row["dev_loss"]) and (tmp_path / "run" / "best.pt").exists()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(v.isfinite().all() for part in ("model", "ema") for v in last[part].values() if v.is_floating_point())
    assert same(last["model"], model_after) != []  # and the last step learnt


@pytest.mark.parametrize(
    ("extra", "fp16", "plan", "message"),
    [
        # Bad losses every other step never make a run of three, but half the steps do nothing.
        (["train.max_bad_steps=3"], False, {1: "nan", 3: "nan", 5: "nan"}, "3 of the 6 steps of epoch 1 skipped"),
        # An epoch shorter than train.max_bad_steps with no finite loss at all.
        ([], False, {i: "nan" for i in range(1, 7)}, "every loss of epoch 1 was non-finite"),
        # fp16 gradients that overflow at every step: the scale falls from 8 below 1.
        (["train.max_bad_steps=1000"], True, {i: "overflow" for i in range(1, 7)}, "loss scale fell to 0.125"),
    ],
    ids=["intermittent", "all-non-finite", "scale-collapse"],
)
def test_runs_that_stop_learning_stop_with_one_line_before_saving(sample, tmp_path, extra, fp16, plan, message):
    t = trainer(sample, tmp_path, "train.batch_size=16", "train.channels_last=false", *extra, fp16=fp16)
    if fp16:
        t.scaler = type(t.scaler)("cpu", init_scale=8.0)
    assert t.batches_per_epoch == 6
    Injected(t, plan)
    with pytest.raises(UserError) as error:
        t.fit()
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.suffix in (".pt", ".csv")]


def test_mixed_batches_are_scored_against_their_dominant_class(sample, tmp_path):
    t = trainer(sample, tmp_path, "train.mixup=0.8", "train.cutmix=1.0", "train.batch_size=16")
    mixup, targets = t.mixup, []

    def mix(images, labels):
        images, target = mixup(images, labels)
        targets.append(target)
        return images, target

    t.mixup = mix
    # An oracle: a model whose logits are the mixed target itself.
    t.model.register_forward_hook(lambda module, args, out: out * 0 + targets[-1])
    with StopRequest(None) as stop:
        t.train_epoch(stop)
    _, correct, count, _ = t.epoch_stats
    assert count == 96 and correct == count


def ddp_process(rank: int, port: int, sample, run, out) -> None:
    """One of two processes of a run in fp16, forked from this one (torch already imported: it starts in no time);
    the second process gets a NaN loss at its second micro-batch. Writes its loss scale to ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    extra = ["train.batch_size=16", "train.channels_last=false", "train.plot=false"]
    t = trainer(sample, run.parent, *extra, fp16=True)
    if rank == 1:
        Injected(t, {2: "nan"})
    t.fit()
    out.write_text(str(t.scaler.get_scale()))


def test_every_process_counts_and_keeps_the_scale_for_another_process_s_bad_loss(sample, tmp_path):
    context = multiprocessing.get_context("fork")
    port, run = free_port(), tmp_path / "run"
    processes = [
        context.Process(target=ddp_process, args=(rank, port, sample, run, tmp_path / f"scale{rank}"))
        for rank in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        if process.is_alive():  # stuck: end it, and the assertion below says so
            process.kill()
            process.join()
    assert [p.exitcode for p in processes] == [0, 0]
    # Both processes skipped the step, kept the scale and count the step once: the process that writes the row
    # (rank 0) had only finite losses.
    assert [(tmp_path / f"scale{rank}").read_text() for rank in range(2)] == ["65536.0", "65536.0"]
    row = pd.read_csv(run / "metrics.csv").iloc[0]
    assert row[["skipped_steps", "non_finite_loss_steps", "overflow_steps"]].tolist() == [1, 1, 0]
