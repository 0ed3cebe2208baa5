"""`make gpu-check`: what FaceNext does on this GPU, beside the seed's loop, in one run; writes benchmarks/gpu.md.

Operational script, not library code. About 3-5 minutes on one T4 (less on faster cards):

- the matmul peak of the precision training uses here (``facenext.device.amp_dtype``: bf16 from Ampere on, else
  fp16), the yardstick for the achieved FLOP/s;
- JPEG decoding on the CPU (one core) against ``torchvision.io.decode_jpeg`` on the GPU (a batch of encoded
  images), and what one loader worker delivers with augmentation on the CPU and with it deferred to the device;
- the training step at 112 and 224 px on a synthetic competition (7,001 identities, one face each, hard links to a
  pool of synthetic JPEGs; written to a temporary folder, so read from the page cache): the project's own
  ``Trainer.train_epoch`` (its loader, augmentation on the CPU and on the GPU, channels-last, its precision, with and
  without torch.compile) against the seed's loop (the seed's model, NCHW, fp16 autocast with a GradScaler,
  torchvision's augmentation in CPU workers, the course starter's per-step loss and accuracy reads), and both
  models alone on batches already on the device (the ceiling the loaders are measured against);
- inference and embedding rates (BatchNorm folded, channels-last, inference_mode, autocast);
- the speed-up of two GPUs under DDP (same global batch), when there are two;
- the projected hours of the seed's F23 recipe (100 epochs of 140,020 images at 224 px) and of an F26 run
  (30 epochs of 431,550 images at 112 px) on this machine;
- the project's training in fp16 with loss scaling, forced whatever the card (what T4s, P100s and V100s train in),
  with bad steps injected at known micro-batches (a NaN loss, an inf loss, a batch of NaN pixels, a finite loss
  whose gradients overflow fp16): the loss scale, BatchNorm's running statistics, the EMA and the weights across
  each skipped step, and two runs that must stop with one line before saving anything (every loss non-finite; a
  loss scale that falls below 1).

Any non-finite loss or weight, or a bad step that leaves a trace, fails the run (exit 1) before anything is written.

    .venv/bin/python scripts/gpu_check.py                       # CUDA: writes benchmarks/gpu.md
    .venv/bin/python scripts/gpu_check.py --device cpu --out x.md   # smoke run, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # the seed's model (bench.Network) and the model-only harness (bench.Contender)
from bench_data import SeedImages, cpu_model

from facenext.config import FACE_MEAN, FACE_STD, load_config
from facenext.data.datasets import FaceImages, image_folder, load_rgb
from facenext.data.device_augment import DeviceAugment, DeviceAugmentImages
from facenext.data.layout import find_layout, list_classes
from facenext.data.sample import write_sample_competition
from facenext.data.transforms import train_transform
from facenext.device import amp_dtype, describe_device, precision_name, resolve_device
from facenext.engine.run_state import all_finite
from facenext.engine.skips import LossScaler, grad_scaler
from facenext.engine.stop import StopRequest
from facenext.engine.train import Trainer
from facenext.errors import UserError
from facenext.models import create_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "f23_lean_convnext.yaml"
TINY_MODEL = ["model.name=lean_nano", "model.dims=[16,32,48,64]", "model.depths=[1,1,1,1]"]
# (name, image size index in the plan's sizes, epochs, training images per epoch)
PROJECTIONS = [
    ("seed's F23 recipe: 100 epochs x 140,020 images", 1, 100, 140_020),
    ("F26: 30 epochs x 431,550 images", 0, 30, 431_550),
]
SESSION_H = 12  # a Kaggle notebook session
GOALS = {0: 2.0, 1: 1.5}  # training step against the seed's loop, by size index (112 px, 224 px)
# The fp16 run's injections, by micro-batch (from 1; one micro-batch per optimizer step), and its batch and length.
BAD_STEPS = {2: "nan", 4: "inf", 5: "nan_images", 7: "overflow"}
FP16_BATCH, FP16_STEPS = 12, 8


class NonFinite(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, int]
    batch: int  # global training batch (the F23 recipe's 256)
    images: int  # identities = training images of the synthetic competition
    pool: int  # distinct JPEGs behind them
    warm: int  # batches not timed (cuDNN autotuning, torch.compile)
    steps: int  # timed steps of the model-only rows
    workers: int
    infer_batch: int
    matmul: int
    compile: bool
    model: tuple[str, ...] = ("model.name=lean",)  # our model: the F23 recipe's

    def our_model(self, classes: int) -> nn.Module:
        values = dict(item.split("=", 1) for item in self.model)
        shape = {k: tuple(json.loads(values[f"model.{k}"])) for k in ("dims", "depths") if f"model.{k}" in values}
        return create_model(values["model.name"], classes, drop_path_rate=0.5, **shape)


GPU_PLAN = Plan((112, 224), 256, 7001, 512, 5, 15, 4, 512, 8192, True)
# Smoke run: every row, tiny images and a tiny model of ours (the seed's stays as it is), no torch.compile.
CPU_PLAN = Plan((32, 48), 8, 24, 16, 1, 1, 1, 8, 256, False, tuple(TINY_MODEL))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# --- data ----------------------------------------------------------------------------------------------------------
def write_competition(root: Path, size: int, plan: Plan) -> Path:
    """A competition of ``plan.images`` identities with one training face each, hard links to ``plan.pool``
    distinct synthetic faces: as many classes and steps as F23, written in seconds. Returns the data root."""
    write_sample_competition(root, "f23", identities=max(2, plan.pool // 16), images_per_identity=16, size=size)
    train = find_layout(root).train
    pool = sorted(p for p in train.rglob("*.jpg"))
    extra = plan.images - len(list_classes(train))
    for i in range(max(0, extra)):
        folder = train / f"x{i:05d}"
        folder.mkdir()
        os.link(pool[i % len(pool)], folder / "0.jpg")
    return root


# --- measurements ---------------------------------------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: torch.dtype | None, n: int, seconds: float = 1.0) -> float:
    """FLOP/s of square matrix products in ``dtype`` (fp32 without autocast)."""
    dtype = dtype or torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    synchronize(device)
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds or count < 3:
        a @ b
        count += 1
        if count % 10 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - tic)


def forward_flops(model: nn.Module, size: int) -> float:
    """Forward FLOPs per image (convolutions and matrix products, as FLOP counters count them)."""
    model = copy.deepcopy(model).cpu().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def decode_rates(paths: Sequence[Path], device: torch.device) -> tuple[float, float]:
    """Images/s decoding JPEGs: one CPU core (PIL, ``load_rgb``), and ``torchvision.io.decode_jpeg`` on ``device``
    with the whole list at once (the batched nvJPEG path on CUDA; the same code on the CPU for the smoke run)."""
    tic = time.perf_counter()
    for path in paths:
        load_rgb(path)
    cpu = len(paths) / (time.perf_counter() - tic)
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, not installed with FaceNext
        warnings.simplefilter("ignore", DeprecationWarning)
        data = [torchvision.io.read_file(str(p)) for p in paths]
        torchvision.io.decode_jpeg(data[:2], device=device)  # initialises the decoder
        synchronize(device)
        tic = time.perf_counter()
        decoded = torchvision.io.decode_jpeg(data, device=device)
        synchronize(device)
    assert len(decoded) == len(paths) and decoded[0].dtype == torch.uint8
    return cpu, len(paths) / (time.perf_counter() - tic)


def worker_rate(dataset: FaceImages, count: int) -> float:
    """Images/s of one loader worker (one thread, as DataLoader workers run)."""
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        keys = [(0, 0, i % len(dataset)) for i in range(count)]
        dataset[keys[0]]
        tic = time.perf_counter()
        for key in keys:
            dataset[key]
        return count / (time.perf_counter() - tic)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def device_augment_rate(dataset: DeviceAugmentImages, device: torch.device, batch: int) -> float:
    """Images/s of ``DeviceAugment`` (colour, warp, erasing, normalisation) on batches already drawn."""
    items = [dataset[(0, 0, i % len(dataset))][0] for i in range(batch)]
    images, params = torch.stack([i for i, _ in items]), torch.stack([p for _, p in items])
    to_model = DeviceAugment(FACE_MEAN, FACE_STD, device, channels_last=True)
    images = images.pin_memory() if device.type == "cuda" else images
    to_model((images, params))
    synchronize(device)
    reps, tic = 10, time.perf_counter()
    for _ in range(reps):
        out = to_model((images, params))
    synchronize(device)
    if not torch.isfinite(out).all():
        raise NonFinite("device augmentation produced non-finite pixels")
    return reps * batch / (time.perf_counter() - tic)


def trainer_rate(root: Path, run: Path, size: int, plan: Plan, device: torch.device, overrides: list[str]) -> float:
    """Images/s of the project's ``Trainer.train_epoch`` on one epoch, the first ``plan.warm`` batches untimed.

    Batches are timed where the loop hands them to ``to_model``, so the workers' start-up and the epoch's first
    refill are left out, as they are in a long epoch; the end waits for the GPU.
    """
    config = load_config(
        RECIPE,
        [
            f"data.root={root}", "data.term=auto", f"data.image_size={size}", f"data.num_workers={plan.workers}",
            f"train.batch_size={plan.batch}", "train.epochs=1", "train.recovery_minutes=0", "train.plot=false",
            "train.log_every=0", *plan.model, *overrides,
        ],
    )  # fmt: skip
    trainer = Trainer(config, run, device)
    calls: list[float] = []
    to_model = trainer.to_model

    def timed(batch: object) -> torch.Tensor:
        calls.append(time.perf_counter())
        return to_model(batch)

    trainer.to_model = timed
    with StopRequest(None) as stop:
        trainer.train_epoch(stop)
    synchronize(device)
    end = time.perf_counter()
    if trainer.skipped["non_finite"] or not all_finite(trainer.model):
        raise NonFinite(f"non-finite training step in the project's loop at {size} px ({' '.join(overrides)})")
    first = min(plan.warm, len(calls) - 1)
    rate = (len(calls) - first) * plan.batch / (end - calls[first])
    return rate


def seed_loop_rate(
    paths: list[Path], labels: list[int], size: int, plan: Plan, device: torch.device, lr: float
) -> float:
    """Images/s of the seed's loop: its model (NCHW), fp16 autocast with a GradScaler on CUDA, torchvision's
    augmentation in CPU workers, and the starter notebook's running loss and accuracy read every step."""
    bench.DEVICE = device  # the seed's DropPath draws its masks on this global
    torch.manual_seed(0)
    model = bench.Network(num_classes=len(set(labels)), drop_rate=bench.DROP_PATH).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    fp16 = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    loader = DataLoader(
        SeedImages(paths, labels, size, size),
        batch_size=plan.batch,
        shuffle=True,
        num_workers=plan.workers,
        pin_memory=fp16,
        drop_last=True,
    )
    calls, loss_sum, correct = [], 0.0, 0
    model.train()
    for images, targets in loader:
        calls.append(time.perf_counter())
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            outputs = model(images)
            loss = F.cross_entropy(outputs, targets, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += float(loss.item())
        correct += int((outputs.argmax(1) == targets).sum())
        if not math.isfinite(loss_sum):
            raise NonFinite(f"non-finite loss in the seed's loop at {size} px")
    synchronize(device)
    end = time.perf_counter()
    first = min(plan.warm, len(calls) - 1)
    return (len(calls) - first) * plan.batch / (end - calls[first])


def timed_steps(step: Callable[[], None], device: torch.device, warm: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warm`` untimed calls."""
    for _ in range(warm):
        step()
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - tic) / steps


def model_rates(
    size: int, plan: Plan, device: torch.device, dtype: torch.dtype | None, classes: int
) -> dict[str, float]:
    """Images/s of both models alone on batches already on the device: training steps (ours in its precision and
    channels-last; the seed fp16 NCHW), inference (logits) and our embeddings."""
    bench.DEVICE = device
    torch.manual_seed(0)
    ours = bench.Contender("ours", "ours", plan.our_model(classes), True, True, device, dtype)
    fp16 = torch.float16 if device.type == "cuda" else None
    seed = bench.Contender(
        "seed", "seed", bench.Network(classes, drop_rate=bench.DROP_PATH), False, False, device, fp16
    )
    x = torch.randn(plan.batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (plan.batch,), device=device)
    xi = torch.randn(plan.infer_batch, 3, size, size, device=device)
    rates = {}
    for c in (ours, seed):
        reset_peak(device)
        rates[f"{c.key}_train"] = plan.batch / timed_steps(
            lambda c=c: c.train_step(x, y), device, plan.warm, plan.steps
        )
        rates[f"{c.key}_train_peak"] = peak_gib(device) or 0.0
        if not all_finite(c.model):
            raise NonFinite(f"non-finite weights after the {c.key} model's training steps at {size} px")
        rates[f"{c.key}_infer"] = plan.infer_batch / timed_steps(lambda c=c: c.infer(xi), device, plan.warm, plan.steps)

    def embed() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            ours.infer_model(ours.prepare(xi), return_feats=True)

    rates["ours_embed"] = plan.infer_batch / timed_steps(embed, device, plan.warm, plan.steps)
    return rates


# --- fp16 with bad steps ------------------------------------------------------------------------------------------
def spoil(loss: torch.Tensor, kind: str | None) -> torch.Tensor:
    """A NaN loss; an inf loss with finite gradients (as an overflowed logit of another class gives); a finite loss
    whose gradients overflow fp16."""
    if kind == "nan":
        return loss * float("nan")
    if kind == "inf":
        return loss + math.inf
    return loss * 1e30 if kind == "overflow" else loss


def fp16_trainer(root: Path, run: Path, size: int, plan: Plan, device: torch.device, *extra: str) -> Trainer:
    """One epoch of the project's training in fp16 with loss scaling and EMA, whatever the card."""
    config = load_config(
        RECIPE,
        [
            f"data.root={root}", "data.term=auto", f"data.image_size={size}", "data.num_workers=0",
            "data.augment_device=cpu", f"train.batch_size={FP16_BATCH}", "train.epochs=1", "train.ema=true",
            "train.recovery_minutes=0", "train.plot=false", "train.log_every=0", "train.keep_top_k=0",
            # fp16 convolutions are slow channels-last on the CPU
            f"train.channels_last={str(device.type == 'cuda').lower()}", *plan.model, *extra,
        ],
    )  # fmt: skip
    trainer = Trainer(config, run, device)
    trainer.dtype, trainer.scaler = torch.float16, grad_scaler(device, torch.float16)
    return trainer


def inject(trainer: Trainer, bad: dict[int, str], watch: frozenset[int] = frozenset()) -> dict[int, tuple]:
    """Spoil ``trainer``'s micro-batches as ``bad`` says; before each micro-batch in ``watch``, copy the weights,
    the BatchNorm statistics and the EMA into the returned dict (filled as training goes)."""
    seen: dict[int, tuple] = {}
    count, criterion, to_model = [0], trainer.criterion, trainer.to_model

    def images(batch: object) -> torch.Tensor:
        count[0] += 1
        if count[0] in watch:
            model, ema = trainer.model.state_dict(), trainer.ema.module.state_dict()
            seen[count[0]] = ({k: v.clone() for k, v in model.items()}, {k: v.clone() for k, v in ema.items()})
        out = to_model(batch)
        return out * float("nan") if bad.get(count[0]) == "nan_images" else out

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return spoil(criterion(logits, targets), bad.get(count[0]))

    trainer.criterion = loss
    images.device = to_model.device  # type: ignore[attr-defined]  # evaluation asks the batch's device
    trainer.to_model = images
    return seen


def stop_message(trainer: Trainer, run: Path) -> str:
    """What ``trainer.fit()`` stopped with (its one line), or why that is wrong; checks that nothing was saved."""
    try:
        trainer.fit()
    except UserError as e:
        saved = sorted(p.name for p in run.iterdir() if p.suffix in (".pt", ".csv"))
        return f"{e}" + (f" (but wrote {', '.join(saved)})" if saved else "")
    return "did not stop"


def fp16_bad_steps(root: Path, tmp: Path, size: int, plan: Plan, device: torch.device) -> dict:
    """The fp16 run with ``BAD_STEPS`` injected, and what it left; then the two runs that must stop."""
    trainer = fp16_trainer(root, tmp / "fp16", size, plan, device)
    if len(trainer.train_loader) < FP16_STEPS:
        raise RuntimeError(f"the fp16 check needs {FP16_STEPS} batches, the data gives {len(trainer.train_loader)}")
    initial = trainer.scaler.get_scale()
    seen = inject(trainer, BAD_STEPS, frozenset(b + d for b in BAD_STEPS for d in (0, 1)))
    with StopRequest(None) as stop:
        trainer.train_epoch(stop)
    synchronize(device)
    moved = {"weights": 0, "BatchNorm statistics": 0, "EMA": 0}
    for batch in BAD_STEPS:
        (model, ema), (model_after, ema_after) = seen[batch], seen[batch + 1]
        stats = [k for k in model if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
        moved["BatchNorm statistics"] += any(not torch.equal(model[k], model_after[k]) for k in stats)
        moved["weights"] += any(not torch.equal(model[k], model_after[k]) for k in model if k not in stats)
        moved["EMA"] += any(not torch.equal(ema[k], ema_after[k]) for k in ema)
    loss_sum, _, count, _ = trainer.epoch_stats
    r = {
        "initial_scale": initial,
        "scale": trainer.scaler.get_scale(),
        "growth_tracker": trainer.scaler.state_dict()["_growth_tracker"],
        "steps": trainer.step,
        "non_finite": trainer.skipped["non_finite"],
        "overflow": trainer.skipped["overflow"],
        "moved": moved,
        "finite_model": all_finite(trainer.model),
        "finite_ema": all_finite(trainer.ema.module),
        "batchnorm_layers": len(trainer.running_stats.live) // 3,
        "train_loss": loss_sum / max(count, 1),
    }
    everything_bad = fp16_trainer(root, tmp / "fp16_all_bad", size, plan, device)
    inject(everything_bad, dict.fromkeys(range(1, len(everything_bad.train_loader) + 1), "nan"))
    r["all_bad_stop"] = stop_message(everything_bad, tmp / "fp16_all_bad")
    collapsing = fp16_trainer(root, tmp / "fp16_collapse", size, plan, device, "train.max_bad_steps=1000")
    collapsing.scaler = LossScaler(device.type, init_scale=8.0)  # below 1 after four overflows
    inject(collapsing, dict.fromkeys(range(1, len(collapsing.train_loader) + 1), "overflow"))
    r["collapse_stop"] = stop_message(collapsing, tmp / "fp16_collapse")
    return r


def fp16_failures(r: dict) -> list[str]:
    """What the fp16 run shows wrong. Expected: each injected NaN or inf loss counted once as a non-finite step and
    leaving the scale alone; the scale halved once per overflow, the injected one and any genuine one (it grows
    back only after 2,000 clean steps); nothing moved across a skipped step; everything finite; both stops."""
    failures = []
    injected = sum(kind != "overflow" for kind in BAD_STEPS.values())
    if r["non_finite"] != injected:
        failures.append(f"{r['non_finite']} non-finite steps counted, {injected} injected")
    if r["overflow"] < 1:
        failures.append("the injected overflow was not counted")
    expected = r["initial_scale"] * 0.5 ** r["overflow"]
    if r["scale"] != expected:
        failures.append(
            f"loss scale {r['scale']:g} after {r['overflow']} overflows and {r['non_finite']} non-finite losses "
            f"from {r['initial_scale']:g}: expected {expected:g}"
        )
    failures += [f"the {what} moved across {n} skipped steps" for what, n in r["moved"].items() if n]
    if not (r["finite_model"] and r["finite_ema"] and math.isfinite(r["train_loss"])):
        failures.append("non-finite weights, EMA or training loss after the bad steps")
    if "every loss of epoch 1 was non-finite" not in r["all_bad_stop"] or "but wrote" in r["all_bad_stop"]:
        failures.append(f"a run with no finite loss: {r['all_bad_stop']}")
    if "loss scale fell to" not in r["collapse_stop"] or "but wrote" in r["collapse_stop"]:
        failures.append(f"a collapsing loss scale: {r['collapse_stop']}")
    return failures


# --- DDP ------------------------------------------------------------------------------------------------------------
def ddp_child(args: argparse.Namespace) -> None:
    """One torchrun process: our model under DDP on random batches, the global batch split between processes;
    rank 0 prints ``DDP {json}`` with the global images/s per size."""
    import torch.distributed as dist

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device("cuda", local) if args.device != "cpu" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dtype = amp_dtype(device, True)
    plan = CPU_PLAN if device.type == "cpu" else GPU_PLAN
    torch.manual_seed(0)
    model = plan.our_model(plan.images).to(device).to(memory_format=torch.channels_last)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    rates = {}
    for size in plan.sizes:
        x = torch.randn(plan.batch // world, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, plan.images, (plan.batch // world,), device=device)

        def step(x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(ddp(x), y, label_smoothing=0.1)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        rates[size] = plan.batch / timed_steps(step, device, plan.warm, plan.steps)
    if not all_finite(model):
        raise NonFinite("non-finite weights under DDP")
    if rank == 0:
        print("DDP " + json.dumps(rates), flush=True)
    dist.destroy_process_group()


def ddp_rates(device: torch.device, processes: int) -> dict[int, float]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launch, __file__, "--ddp-child", "--device", device.type]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("DDP ")]
    if result.returncode or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise RuntimeError("the DDP measurement failed:\n" + "\n".join(tail))
    return {int(k): v for k, v in json.loads(lines[-1][4:]).items()}


# --- the run ------------------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, device: torch.device, plan: Plan, tmp: Path) -> dict:
    dtype = amp_dtype(device, True)
    start = time.perf_counter()
    results: dict = {"sizes": {}, "peak": matmul_peak(device, dtype, plan.matmul)}
    log(f"matmul peak {results['peak'] / 1e12:.1f} TFLOP/s ({precision_name(dtype)})", start)
    for index, size in enumerate(plan.sizes):
        root = write_competition(tmp / f"data{size}", size, plan)
        train = find_layout(root).train
        classes = list_classes(train)
        paths, labels = image_folder(train, classes)
        pool = paths[: plan.infer_batch]  # decoding speed: any files will do
        r: dict = {"classes": len(classes)}
        r["decode_cpu"], r["decode_device"] = decode_rates(pool, device)
        cpu_set = FaceImages(paths, labels, train_transform("seed", size, FACE_MEAN), size)
        device_set = DeviceAugmentImages(paths, labels, train_transform("seed", size, FACE_MEAN, True), size)
        count = min(len(pool), 128 if device.type == "cuda" else 16)
        r["worker_cpu_aug"], r["worker_device_aug"] = worker_rate(cpu_set, count), worker_rate(device_set, count)
        r["device_augment"] = device_augment_rate(device_set, device, plan.batch)
        log(f"{size} px: data path measured", start)
        # Training FLOPs: the forward pass and the backward pass (twice the forward's).
        r["flops_ours"] = 3 * forward_flops(plan.our_model(len(classes)), size)
        r["flops_seed"] = 3 * forward_flops(bench.Network(len(classes), drop_rate=0.0), size)
        lr = f"train.lr={args.lr}"
        loops = [("seed", None), ("cpu", [lr, "data.augment_device=cpu"]), ("gpu", [lr, "data.augment_device=gpu"])]
        if plan.compile:
            loops.append(("gpu_compile", [lr, "data.augment_device=gpu", "train.compile=true"]))
        for name, overrides in loops:
            reset_peak(device)
            if overrides is None:
                r["loop_seed"] = seed_loop_rate(paths, labels, size, plan, device, args.lr)
            else:
                r[f"loop_{name}"] = trainer_rate(root, tmp / f"run{size}{name}", size, plan, device, overrides)
            r[f"loop_{name}_peak"] = peak_gib(device)
            gc.collect()
            log(f"{size} px: {name} loop {r[f'loop_{name}']:.0f} images/s", start)
        r.update(model_rates(size, plan, device, dtype, len(classes)))
        log(f"{size} px: models alone measured", start)
        results["sizes"][index] = r
    root = tmp / "fp16_data"  # 8 identities, 96 training faces
    write_sample_competition(root, "f23", identities=8, images_per_identity=20, size=64, seed=1)
    results["fp16"] = fp16_bad_steps(root, tmp, plan.sizes[0], plan, device)
    failures = fp16_failures(results["fp16"])
    if failures:
        raise NonFinite("fp16 bad steps: " + "; ".join(failures))
    log("fp16 with bad steps checked", start)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    processes = args.ddp or (2 if gpus >= 2 else 0)
    results["ddp"] = ddp_rates(device, processes) if processes else None
    results["ddp_processes"] = processes
    results["seconds"] = time.perf_counter() - start
    return results


def log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:5.0f} s] {message}", file=sys.stderr, flush=True)


def report(results: dict, device: torch.device, plan: Plan) -> str:
    dtype = amp_dtype(device, True)
    peak = results["peak"]
    sizes = results["sizes"]
    gib = lambda v: f"{v:.2f}" if v else "-"  # noqa: E731
    smoke = plan is CPU_PLAN
    best = {i: max(r["loop_cpu"], r["loop_gpu"], r.get("loop_gpu_compile", 0.0)) for i, r in sizes.items()}
    lines = [
        "# GPU check: FaceNext's training step beside the seed's, on this machine",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; total {results['seconds']:.0f} s",
        f"- device: {describe_device(device)}; GPUs: {torch.cuda.device_count() if device.type == 'cuda' else 0}; "
        f"CPU: {cpu_model()} x {os.cpu_count()}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}",
        f"- our precision: {precision_name(dtype)} (`facenext.device.amp_dtype`), channels-last; the seed's: "
        f"{'fp16 autocast + GradScaler' if device.type == 'cuda' else 'fp32 (no autocast off CUDA)'}, NCHW",
        f"- global batch {plan.batch}, {plan.workers} loader workers, {sizes[0]['classes']:,} identities (one "
        f"synthetic JPEG face each); the first {plan.warm} batches of each loop untimed; matmul peak "
        f"({precision_name(dtype)}, {plan.matmul}x{plan.matmul}): {peak / 1e12:.3g} TFLOP/s",
        *([f"- CPU smoke run: our model is {' '.join(plan.model)}; the numbers check the plumbing only"] * smoke),
        "",
        "## Summary",
        "",
        "| check | measured | goal |",
        "|---|---:|---|",
    ]
    for i, r in sizes.items():
        s = plan.sizes[i]
        lines.append(f"| training step vs the seed's loop, {s} px | {best[i] / r['loop_seed']:.2f}x | ≥ {GOALS[i]}x |")
    for i, r in sizes.items():
        feed = plan.workers * r["worker_device_aug"]
        lines.append(
            f"| {plan.workers} worker(s) feed (augmenting on the GPU) vs the model alone, {plan.sizes[i]} px | "
            f"{feed / r['ours_train']:.2f}x | ≥ 1x (the data path never the bottleneck) |"
        )
    f23 = projection(results, plan, 0)
    lines.append(f"| the F23 recipe, hours on this machine | {f23:.1f} h | < {SESSION_H} h on a T4 x2 session |")
    lines += [
        "",
        "## Training (images/s; FLOP/s counted as 3x the forward pass's)",
        "",
        "| size | loop | images/s | vs seed loop | peak memory GiB | TFLOP/s | of matmul peak |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    names = [
        ("loop_seed", "seed's loop (torchvision in workers, NCHW, fp16 on CUDA)", "flops_seed"),
        ("loop_cpu", "ours, augmenting in the workers", "flops_ours"),
        ("loop_gpu", "ours, augmenting on the GPU", "flops_ours"),
        ("loop_gpu_compile", "ours, augmenting on the GPU, torch.compile", "flops_ours"),
        ("seed_train", "seed model alone (batches on the device)", "flops_seed"),
        ("ours_train", "our model alone (batches on the device)", "flops_ours"),
    ]
    for i, r in sizes.items():
        for key, label, flops in names:
            if key not in r:
                lines.append(
                    f"| {plan.sizes[i]} px | {label} | skipped (no torch.compile in the CPU smoke run) | | | | |"
                )
                continue
            achieved = r[key] * r[flops]
            lines.append(
                f"| {plan.sizes[i]} px | {label} | {r[key]:.1f} | {r[key] / r['loop_seed']:.2f}x | "
                f"{gib(r.get(key + '_peak'))} | {achieved / 1e12:.3g} | {achieved / peak:.2%} |"
            )
    lines += [
        "",
        "## Data path (images/s)",
        "",
        "| size | JPEG decode, 1 CPU core | JPEG decode, decode_jpeg on the device (batch) | one worker: decode + "
        "augment | one worker: decode only (augmenting on the GPU) | augmentation on the device |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, r in sizes.items():
        lines.append(
            f"| {plan.sizes[i]} px | {r['decode_cpu']:.0f} | {r['decode_device']:.0f} | {r['worker_cpu_aug']:.0f} | "
            f"{r['worker_device_aug']:.0f} | {r['device_augment']:.0f} |"
        )
    lines += [
        "",
        f"## Inference (images/s, batch {plan.infer_batch}, BatchNorm folded, inference_mode)",
        "",
        "| size | ours: logits | ours: embeddings | seed: logits |",
        "|---|---:|---:|---:|",
    ]
    for i, r in sizes.items():
        lines.append(f"| {plan.sizes[i]} px | {r['ours_infer']:.0f} | {r['ours_embed']:.0f} | {r['seed_infer']:.0f} |")
    lines += ["", "## Two GPUs (DDP, our model alone, the same global batch)", ""]
    ddp = results["ddp"]
    if ddp:
        lines += [f"| size | 1 process | {results['ddp_processes']} processes | speed-up |", "|---|---:|---:|---:|"]
        for i, r in sizes.items():
            rate = ddp[plan.sizes[i]]
            lines.append(f"| {plan.sizes[i]} px | {r['ours_train']:.0f} | {rate:.0f} | {rate / r['ours_train']:.2f}x |")
    else:
        lines.append("Not measured: one GPU here.")
    lines += ["", *fp16_report(results["fp16"])]
    lines += [
        "",
        "## Projected training time (hours, at the measured rates; evaluation and checkpoints not included)",
        "",
        "| run | size | seed's loop | ours, 1 GPU | ours, all GPUs (DDP speed-up) |",
        "|---|---|---:|---:|---:|",
    ]
    for row, (name, i, epochs, images) in enumerate(PROJECTIONS):
        r = sizes[i]
        hours = epochs * images / 3600
        scaled = f"{projection(results, plan, row):.1f}" if ddp else "-"
        lines.append(
            f"| {name} | {plan.sizes[i]} px | {hours / r['loop_seed']:.1f} | {hours / best[i]:.1f} | {scaled} |"
        )
    return "\n".join(lines) + "\n"


def fp16_report(r: dict) -> list[str]:
    """The fp16 section: what the injected bad steps left, beside what must hold (``fp16_failures``)."""
    kinds = ", ".join(f"{kind} at step {step}" for step, kind in BAD_STEPS.items())
    injected = sum(kind != "overflow" for kind in BAD_STEPS.values())
    moved = " / ".join(str(n) for n in r["moved"].values())
    return [
        f"## fp16 with injected bad steps ({r['steps']} steps of batch {FP16_BATCH}, EMA on, "
        f"{r['batchnorm_layers']} BatchNorm layers; forced whatever the card)",
        "",
        f"Injected: {kinds}.",
        "",
        "| check | measured | must be |",
        "|---|---:|---|",
        f"| steps skipped for a non-finite loss | {r['non_finite']} | {injected} |",
        f"| steps skipped for an overflow | {r['overflow']} | ≥ 1 (the injected one, and any genuine one) |",
        f"| loss scale after (from {r['initial_scale']:g}) | {r['scale']:g} | "
        f"{r['initial_scale'] * 0.5 ** r['overflow']:g} (halved per overflow only) |",
        f"| skipped steps that moved the weights / BatchNorm statistics / EMA | {moved} | 0 / 0 / 0 |",
        f"| weights, EMA and training loss finite | "
        f"{'yes' if r['finite_model'] and r['finite_ema'] and math.isfinite(r['train_loss']) else 'no'} | yes |",
        f"| every loss non-finite | {r['all_bad_stop'].split(':')[0]} | stops, nothing saved |",
        f"| overflow at every step from scale 8 | {r['collapse_stop'].split(':')[0]} | stops, nothing saved |",
    ]


def projection(results: dict, plan: Plan, row: int) -> float:
    """Hours of ``PROJECTIONS[row]`` with our best loop, times the DDP speed-up where measured."""
    _, i, epochs, images = PROJECTIONS[row]
    r = results["sizes"][i]
    rate = max(r["loop_cpu"], r["loop_gpu"], r.get("loop_gpu_compile", 0.0))
    if results["ddp"]:
        rate *= results["ddp"][plan.sizes[i]] / r["ours_train"]
    return epochs * images / rate / 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default, cuda:N), or cpu for a smoke run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.md"), help="the markdown report")
    parser.add_argument("--ddp", type=int, default=0, help="DDP processes (default: 2 when there are 2 GPUs)")
    parser.add_argument("--lr", type=float, default=4e-3, help="learning rate of the loops (the F23 recipe's)")
    parser.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_child:
        ddp_child(args)
        return 0
    device = resolve_device(args.device)
    plan = CPU_PLAN if device.type == "cpu" else GPU_PLAN
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # the smoke run checks the plumbing; one thread is fastest on a shared CPU
    with tempfile.TemporaryDirectory(prefix="facenext-gpu-check.") as tmp:
        try:
            results = measure(args, device, plan, Path(tmp))
        except NonFinite as e:
            print(f"gpu-check: FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            torch.set_num_threads(threads)
    text = report(results, device, plan)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
