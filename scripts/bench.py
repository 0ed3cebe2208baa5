"""Throughput of the lean ConvNeXt on this machine: this project's model against timm's (and the seed's).

Operational script, not library code. Every model is trained (AdamW step) and run for inference on random
images at 112 and 224 px. The models take turns within each repetition (round-robin after a warm-up round),
so the machine's drifting load hits them alike; the table reports medians. By default ours and timm's ConvNeXt
run like for like: both channels-last, both with BatchNorm folded for inference (``--models`` adds the seed,
timm's as an earlier version of this script ran it, NCHW and unfolded, and ours in NCHW).

    .venv/bin/python scripts/bench.py --out benchmarks/results.md      # ~3 minutes on 2 CPU cores
    .venv/bin/python scripts/bench.py --quick                          # smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from facenext.device import amp_dtype, autocast, resolve_device
from facenext.models import count_parameters, create_model, fuse_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import cpu_model

NUM_CLASSES = 7001
DROP_PATH = 0.5

# ---------------------------------------------------------------------------------------------------------------
# The seed's implementation (shared/seed/ConvNext.md, "Implementation"), copied as written. Only its globals are
# replaced: config['truncated_normal_mean'/'_std'] by the constants below and DEVICE by --device. Its x.clone() and
# its drop-path schedule (a linspace over sum(channel_list), indexed by i+j) are kept on purpose.
# ---------------------------------------------------------------------------------------------------------------
TRUNCATED_NORMAL_MEAN = 0.0
TRUNCATED_NORMAL_STD = 0.02
DEVICE = "cpu"


class DropPath(torch.nn.Module):
    """
    Stochastic Depth (we drop the non-shortcut path inside residual blocks with
                      some probability p)
    """

    def __init__(self, drop_probability=0.0):
        super().__init__()
        self.drop_prob = drop_probability

    def forward(self, x):
        # if drop prob is zero or in inference mode, skip this
        if np.isclose(self.drop_prob, 0.0, atol=1e-9) or not self.training:
            return x

        # find output shape (eg. if input = 4D tensor, output = (1,1,1,1))
        # output_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        output_shape = (x.shape[0], 1, 1, 1)

        # create mask of output shape and of input type on same device
        keep_mask = torch.empty(output_shape, dtype=x.dtype, device=DEVICE).bernoulli_(1 - self.drop_prob)
        # Alternative: random_tensor = x.new_empty(shape).bernoulli_(keep_prob)

        # NOTE: all methods like bernoulli_ with the underscore suffix means they
        # are inplace operations
        keep_mask.div_(1 - self.drop_prob)

        return x * keep_mask


class ConvNextBlock(torch.nn.Module):
    """
    Refer : https://browse.arxiv.org/pdf/2201.03545v2.pdf for detailed architechture

    """

    def __init__(self, num_ch, expansion_factor, drop_prob=0.0):
        # num_ch = number of channels at first and third layer of block
        # There'll be an expansion in the second layer given by expansion_factor
        super().__init__()

        """
        NOTE: To perform depthwise conv we use the param (groups=num_ch)
        to create a separate filter for each input channel
        """

        self.main_block = torch.nn.Sequential(
            # 1st conv layer (deptwise)
            torch.nn.Conv2d(in_channels=num_ch, out_channels=num_ch, kernel_size=7, padding=3, groups=num_ch),
            torch.nn.BatchNorm2d(num_ch),
            # 2nd conv layer
            torch.nn.Conv2d(
                in_channels=num_ch, out_channels=num_ch * expansion_factor, kernel_size=1, stride=1
            ),  # 1x1 pointwise convs implemented as Linear Layer
            torch.nn.GELU(),
            # 3rd conv layer
            torch.nn.Conv2d(in_channels=num_ch * expansion_factor, out_channels=num_ch, kernel_size=1, stride=1),
        )

        for layer in self.main_block:
            if isinstance(layer, torch.nn.Conv2d):
                init.trunc_normal_(layer.weight, mean=TRUNCATED_NORMAL_MEAN, std=TRUNCATED_NORMAL_STD)
                init.constant_(layer.bias, 0)

        # define the drop_path layer
        if drop_prob > 0.0:
            self.drop_residual_path = DropPath(drop_prob)
        else:
            self.drop_residual_path = torch.nn.Identity()

    def forward(self, x):
        input = x.clone()
        x = self.main_block(x)

        # sum the main and shortcut connection
        x = input + self.drop_residual_path(x)

        return x


class Network(torch.nn.Module):
    """
    ConvNext
    """

    def __init__(self, num_classes=7001, drop_rate=0.5, expand_factor=4):
        super().__init__()

        self.backbone_out_channels = 400
        self.num_classes = num_classes

        # number of channels at input/output of each res_blocks
        self.channel_list = [50, 175, 250, 400]

        # number of repeats for each res_block
        self.block_repeat_list = [6, 5, 4, 4]

        # define number of stages from above
        self.num_stages = len(self.block_repeat_list)

        self.drop_path_probabilities = [i.item() for i in torch.linspace(0, drop_rate, sum(self.channel_list))]

        # # Define the Stem (the first layer which takes input images)
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels=3, out_channels=self.channel_list[0], kernel_size=4, stride=4),
            torch.nn.BatchNorm2d(self.channel_list[0]),
        )

        # truncated normal initialization
        for layer in self.stem:
            if isinstance(layer, torch.nn.Conv2d):
                init.trunc_normal_(layer.weight, mean=TRUNCATED_NORMAL_MEAN, std=TRUNCATED_NORMAL_STD)
                init.constant_(layer.bias, 0)

        # # Store the LayerNorm and Downsampling layer when switching btw 2 types of res_blocks
        self.block_to_block_ln_and_downsample = [self.stem]
        for i in range(self.num_stages - 1):
            inter_downsample = torch.nn.Sequential(
                torch.nn.BatchNorm2d(self.channel_list[i]),
                torch.nn.Conv2d(
                    in_channels=self.channel_list[i], out_channels=self.channel_list[i + 1], kernel_size=2, stride=2
                ),
            )
            self.block_to_block_ln_and_downsample.append(inter_downsample)

        # Store the Res_block stages (eg. 3xres_2, 3xres_3, ...)
        self.res_block_stages = torch.nn.ModuleList()
        for i in range(self.num_stages):
            res_block_layer = []
            for j in range(self.block_repeat_list[i]):
                res_block_layer.append(
                    ConvNextBlock(
                        num_ch=self.channel_list[i],
                        expansion_factor=expand_factor,
                        drop_prob=self.drop_path_probabilities[i + j],
                    )
                )

            # append the repeated res_blocks as one layer
            self.res_block_stages.append(torch.nn.Sequential(*res_block_layer))

        # truncated normal initialization
        for res_block_stage in self.res_block_stages:
            for layer in res_block_stage:
                if isinstance(layer, torch.nn.Conv2d):
                    init.trunc_normal_(layer.weight, mean=TRUNCATED_NORMAL_MEAN, std=TRUNCATED_NORMAL_STD)
                    init.constant_(layer.bias, 0)

        self.backbone = torch.nn.Sequential(
            # essentially stem (replace with stem if it works)
            self.block_to_block_ln_and_downsample[0],
            # res_1 block
            self.res_block_stages[0],
            self.block_to_block_ln_and_downsample[1],
            # res_2 block
            self.res_block_stages[1],
            self.block_to_block_ln_and_downsample[2],
            # res_3 block
            self.res_block_stages[2],
            self.block_to_block_ln_and_downsample[3],
            # res_4 block
            self.res_block_stages[3],
            torch.nn.AdaptiveAvgPool2d((1, 1)),
            torch.nn.Flatten(),
        )

        self.cls_layer = torch.nn.Sequential(torch.nn.Linear(self.backbone_out_channels, self.num_classes))

        # truncated normal initialization
        for layer in self.cls_layer:
            if isinstance(layer, torch.nn.Linear):
                init.trunc_normal_(layer.weight, mean=TRUNCATED_NORMAL_MEAN, std=TRUNCATED_NORMAL_STD)
                init.constant_(layer.bias, 0)

    def forward(self, x, return_feats=False):
        feats = self.backbone(x)
        out = self.cls_layer(feats)

        if return_feats:
            return feats
        else:
            return out


# ---------------------------------------------------------------------------------------------------------------
# The harness.
# ---------------------------------------------------------------------------------------------------------------


class Contender:
    """One model under test with its own optimizer, memory format, device and autocast dtype."""

    def __init__(
        self,
        key: str,
        label: str,
        model: nn.Module,
        channels_last: bool,
        fuse: bool = False,
        device: torch.device = torch.device("cpu"),
        dtype: torch.dtype | None = None,
        compile_model: bool = False,
    ) -> None:
        self.key, self.label, self.channels_last = key, label, channels_last
        self.device, self.dtype = device, dtype
        self.parameters = count_parameters(model)
        model = model.to(device)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        # Our inference path (facenext.inference.load_run) folds BatchNorm into the convolutions; timing needs no
        # trained weights, so a copy folded once stands for it.
        self.infer_model, self.folded = self.model, 0
        if fuse:
            self.infer_model = copy.deepcopy(self.model).eval()
            self.folded = fuse_batchnorm(self.infer_model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        if compile_model:
            self.model, self.infer_model = torch.compile(self.model), torch.compile(self.infer_model)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            loss = F.cross_entropy(self.model(self.prepare(x)), y, label_smoothing=0.1)
        loss.backward()
        self.optimizer.step()

    def infer(self, x: torch.Tensor) -> None:
        self.infer_model.eval()
        with torch.inference_mode(), autocast(self.device, self.dtype):  # as facenext.inference runs every model
            self.infer_model(self.prepare(x))

    def setting(self) -> str:
        """How this contender runs, for the report."""
        layout = "channels-last" if self.channels_last else "NCHW (contiguous)"
        folded = f"{self.folded} BatchNorms folded for inference" if self.folded else "nothing folded"
        return f"{self.label}: {self.parameters:,} parameters, {layout}, {folded}"


def ours() -> nn.Module:
    return create_model("lean", NUM_CLASSES, drop_path_rate=DROP_PATH)


def timm_lean() -> nn.Module:
    """timm's ConvNeXt built as the lean model: BatchNorm, 1x1-conv MLP (channels-last needs no permute), no layer
    scale. Its head keeps timm's norm after pooling, which ours leaves out (800 parameters more)."""
    return timm.models.convnext.ConvNeXt(
        dims=(50, 175, 250, 400),
        depths=(6, 5, 4, 4),
        norm_layer=nn.BatchNorm2d,
        conv_mlp=True,
        ls_init_value=None,
        num_classes=NUM_CLASSES,
        drop_path_rate=DROP_PATH,
    )


# key -> (label, model, channels-last, fold BatchNorm for inference). The first is the one ratios divide.
CONTENDERS: dict[str, tuple[str, Callable[[], nn.Module], bool, bool]] = {
    "ours": ("ours", ours, True, True),
    "timm": ("timm ConvNeXt", timm_lean, True, True),
    "timm_nchw": ("timm ConvNeXt (NCHW, unfolded)", timm_lean, False, False),
    "ours_nchw": ("ours (NCHW)", ours, False, True),
    "seed": ("seed", lambda: Network(num_classes=NUM_CLASSES, drop_rate=DROP_PATH), False, False),
}
DEFAULT_CONTENDERS = "ours,timm"


def build_contenders(
    device: torch.device, dtype: torch.dtype | None, keys: list[str], compiled: bool
) -> list[Contender]:
    torch.manual_seed(0)
    on = {"device": device, "dtype": dtype}
    contenders = []
    for key in keys:
        label, build, channels_last, fuse = CONTENDERS[key]
        contenders.append(Contender(key, label, build(), channels_last, fuse, **on))
    if compiled:
        label = "ours (channels-last, torch.compile)"
        contenders.append(Contender("compiled", label, ours(), True, True, compile_model=True, **on))
    return contenders


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = amp_dtype(device, args.amp)
    global DEVICE  # the seed's DropPath draws its mask on the global DEVICE
    DEVICE = device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    keys = args.models.split(",")
    if keys[0] != "ours" or not set(keys) <= set(CONTENDERS):
        raise SystemExit(f"--models {args.models}: ours first, then any of {', '.join(CONTENDERS)}")
    contenders = build_contenders(device, dtype, keys, args.compile)
    # (label, mode, image size, batch)
    tasks = [
        ("train", args.small, args.train_batch),
        ("infer", args.small, args.infer_batch),
        ("train", args.large, args.train_batch_large),
        ("infer", args.large, args.infer_batch),
    ]
    tasks = [task for task in tasks if task[1] > 0]  # --large 0: the small size only
    gen = torch.Generator().manual_seed(0)
    inputs = {
        (size, batch): (
            torch.randn(batch, 3, size, size, generator=gen).to(device),
            torch.randint(0, NUM_CLASSES, (batch,)).to(device),
        )
        for _, size, batch in tasks
    }
    times: dict[tuple[int, str], list[float]] = {}
    start = time.perf_counter()
    for rep in range(args.warmup + args.reps):
        for t, (mode, size, batch) in enumerate(tasks):
            x, y = inputs[size, batch]
            for c in contenders:
                step: Callable[[], None] = partial(c.train_step, x, y) if mode == "train" else partial(c.infer, x)
                synchronize(device)
                tic = time.perf_counter()
                for _ in range(args.iters):
                    step()
                synchronize(device)
                elapsed = (time.perf_counter() - tic) / args.iters
                if rep >= args.warmup:
                    times.setdefault((t, c.key), []).append(batch / elapsed)
        phase = "warm-up" if rep < args.warmup else f"repetition {rep - args.warmup + 1}/{args.reps}"
        print(f"{phase} done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - start

    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    others = contenders[1:]
    lines = [
        "# Throughput benchmark: lean ConvNeXt (7001 classes)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}",
        f"- CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}",
        f"- device: {device_name(device)}; autocast: {str(dtype).replace('torch.', '') if dtype else 'off (float32)'}",
        f"- command: `python scripts/bench.py {' '.join(sys.argv[1:])}`",
        f"- {args.warmup} warm-up round(s) then {args.reps} repetitions, models interleaved round-robin in one "
        f"process, {args.iters} step(s) per measurement; medians in images/s (min-max in the second table); "
        f"total {total:.0f} s",
        f"- training: forward + backward + AdamW step, cross-entropy, drop-path rate {DROP_PATH} for every model, "
        "in the memory format listed (BatchNorm cannot fold while training); inference: eval mode, inference_mode, "
        "BatchNorm folded into the convolutions where listed (`facenext.models.fuse_batchnorm`, as `facenext "
        "predict` runs our model)",
        *(f"- {c.setting()}" for c in contenders),
        "",
        "| task | "
        + " | ".join(c.label for c in contenders)
        + " | "
        + " | ".join(f"ours/{c.label}" for c in others)
        + " |",
        "|---|" + "---:|" * (len(contenders) + len(others)),
    ]
    for t, (mode, size, batch) in enumerate(tasks):
        m = {c.key: med[t, c.key] for c in contenders}
        cells = [f"{m[c.key]:.1f}" for c in contenders] + [f"{m['ours'] / m[c.key]:.2f}x" for c in others]
        lines.append(f"| {mode} {size} px, batch {batch} | " + " | ".join(cells) + " |")
    lines += ["", "Spread (min-max images/s over the repetitions):", ""]
    lines += ["| task | " + " | ".join(c.label for c in contenders) + " |", "|---|" + "---:|" * len(contenders)]
    for t, (mode, size, batch) in enumerate(tasks):
        cells = " | ".join(f"{spread[t, c.key][0]:.1f}-{spread[t, c.key][1]:.1f}" for c in contenders)
        lines.append(f"| {mode} {size} px, batch {batch} | {cells} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Verification scoring (--section verify): pair scores and identity matching on random embeddings.
# ---------------------------------------------------------------------------------------------------------------


def run_verify(args: argparse.Namespace) -> str:
    """Time the verification scoring once embeddings exist: 1 M pairs over 10 k images, and 720 x 960 matching."""
    import tracemalloc

    from facenext.verification.identity import best_matches, threshold_curve
    from facenext.verification.metrics import pair_metrics
    from facenext.verification.similarity import PAIR_CHUNK, Scoring, score_pairs

    torch.set_num_threads(args.threads)
    images, pairs, dim = (1000, 20_000, 512) if args.quick else (10_000, 1_000_000, 512)
    unknown, known = 720, 960
    rng = np.random.default_rng(0)

    def normalised(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
        times, result = [], None
        for _ in range(reps):
            tic = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - tic)
        return statistics.median(times), result

    feats = normalised(images)
    first, second = rng.integers(0, images, pairs), rng.integers(0, images, pairs)
    labels = rng.integers(0, 2, pairs)
    reps = 1 if args.quick else 3
    loop_n = min(pairs, 50_000)
    loop_pairs = list(zip(first[:loop_n], second[:loop_n], strict=True))
    t_pairs_all, t_loop_all, scores = [], [], None
    for _ in range(reps):  # interleaved, so the machine's varying load hits both alike
        t, scores = timed(lambda: score_pairs(feats, first, second), 1)
        t_pairs_all.append(t)
        t_loop_all.append(timed(lambda: [float(feats[a] @ feats[b]) for a, b in loop_pairs], 1)[0])
    t_pairs, t_loop = statistics.median(t_pairs_all), statistics.median(t_loop_all)
    tracemalloc.start()
    score_pairs(feats, first, second)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t_metrics, _ = timed(lambda: pair_metrics(np.asarray(scores), labels), 1)

    gallery, probes = normalised(known), normalised(unknown)
    names = np.array([f"n{i:06d}" for i in range(known)])
    truth = names[rng.integers(0, known, unknown)]

    def identity() -> object:
        predicted, similarity = best_matches(probes @ gallery.T, names)
        return threshold_curve(similarity, predicted, truth, "n000000")

    t_identity, _ = timed(identity, 5)
    # Expansion and re-ranking work on every image of a split (F26: 12,000 in ver_data, 5,000 test pairs)
    some = slice(0, 5000)
    t_expand, _ = timed(lambda: Scoring(expand=5).pairs(feats, first[some], second[some]), 1)
    t_rerank, _ = timed(lambda: Scoring(rerank=10).pairs(feats, first[some], second[some]), 1)
    lines = [
        "# Verification scoring benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- numpy {np.__version__}, Python {platform.python_version()}, CPU: {cpu_model()}",
        f"- random L2-normalised float32 embeddings, {dim}-d; embeddings already computed (cached), so this is "
        f"scoring only; medians of {reps} run(s) where stated",
        "",
        "| task | time | note |",
        "|---|---:|---|",
        f"| score {pairs:,} pairs over {images:,} images (`score_pairs`, chunks of {PAIR_CHUNK:,}) | "
        f"{t_pairs:.3f} s | {pairs / t_pairs / 1e6:.1f} M pairs/s; peak extra memory {peak / 2**20:.1f} MiB "
        f"(embeddings {feats.nbytes / 2**20:.1f} MiB, scores {pairs * 4 / 2**20:.1f} MiB) |",
        f"| same, Python loop over pairs (first {loop_n:,}, extrapolated) | {t_loop * pairs / loop_n:.1f} s | "
        f"{t_loop * pairs / loop_n / t_pairs:.0f}x slower |",
        f"| dev metrics on {pairs:,} scores (EER, AUC, TAR@FAR, best and 10-fold accuracy) | {t_metrics:.2f} s | "
        "one run |",
        f"| identity matching {unknown} unknown x {known} known + threshold curve | {t_identity * 1000:.1f} ms | "
        "median of 5 |",
        f"| query expansion (k=5) over {images:,} images, then {len(first[some]):,} pairs | {t_expand:.2f} s | "
        "one run |",
        f"| k-reciprocal re-ranking (k1=10) over {images:,} images, then {len(first[some]):,} pairs | "
        f"{t_rerank:.1f} s | one run |",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Inference with test-time augmentation (--section inference): facenext.inference.run_model on real JPEG files.
# ---------------------------------------------------------------------------------------------------------------


def run_inference(args: argparse.Namespace) -> str:
    import tempfile

    from PIL import Image

    from facenext.config import load_config
    from facenext.inference import LoadedRun, parse_tta, run_model

    torch.set_num_threads(args.threads)
    size, count = (32, 16) if args.quick else (args.small, args.images)
    if args.quick:
        args.reps, args.warmup = 1, 0
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "f23_lean_convnext.yaml", [f"data.image_size={size}", "data.num_workers=0"])
    torch.manual_seed(0)
    model = create_model("lean", NUM_CLASSES).eval()
    fuse_batchnorm(model)
    model = model.to(memory_format=torch.channels_last)
    run = LoadedRun("bench", root, config, [str(i) for i in range(NUM_CLASSES)], model, torch.device("cpu"), None)
    specs = ["none", "flip", "five@0.9", "ten@0.9"]
    times: dict[str, list[float]] = {s: [] for s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(count):
            paths.append(Path(tmp) / f"{i:06d}.jpg")
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1], quality=90)
        start = time.perf_counter()
        for rep in range(args.warmup + args.reps):
            for spec in specs:  # round-robin: drifting load hits every spec alike
                tic = time.perf_counter()
                run_model(run, paths, spec, args.infer_batch, return_feats=False)
                if rep >= args.warmup:
                    times[spec].append(time.perf_counter() - tic)
            print(f"inference round {rep + 1} done after {time.perf_counter() - start:.0f} s", file=sys.stderr)
    single = statistics.median(times["none"])
    lines = [
        "# Inference benchmark: lean ConvNeXt (7001 classes) through `facenext.inference.run_model`",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}",
        f"- {count} JPEG files of {size} px decoded from disk, batch {args.infer_batch}, BatchNorm folded, "
        f"channels-last, no AMP (CPU); {args.warmup} warm-up round(s), then {args.reps} repetitions with the specs "
        "interleaved; medians. Views are made on the batch tensor (slice, interpolate, flip): decoding is shared.",
        "- cost ratio = time for k views / (k x time for 1 view); the budget is 1.10",
        "",
        "| TTA | views | images/s | view-images/s | cost ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for spec in specs:
        k = len(parse_tta(spec))
        t = statistics.median(times[spec])
        lines.append(f"| {spec} | {k} | {count / t:.1f} | {count * k / t:.1f} | {t / (k * single):.2f} |")
    return "\n".join(lines) + "\n"


def _run_data(args: argparse.Namespace) -> str:
    """The data-pipeline section (decoding + augmentation per worker), kept in its own script."""
    from bench_data import run_data

    return run_data(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Markdown file to write (default: print only)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny images and batches, one repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=1, help="steps per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--small", type=int, default=112)
    parser.add_argument("--large", type=int, default=224, help="0 leaves the large size out")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-batch-large", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (throughput)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (fp16 where unsupported) on CUDA")
    parser.add_argument("--compile", action="store_true", help="add our model under torch.compile (throughput)")
    parser.add_argument(
        "--models",
        default=DEFAULT_CONTENDERS,
        help=f"throughput: comma-separated, ours first, of {', '.join(CONTENDERS)} (default {DEFAULT_CONTENDERS}: "
        "both channels-last, BatchNorm folded for inference)",
    )
    parser.add_argument(
        "--section",
        choices=("throughput", "verify", "inference", "data"),
        default="throughput",
        help="throughput (default), verify, inference (TTA views through run_model) or data (scripts/bench_data.py)",
    )
    parser.add_argument("--images", type=int, default=256, help="images per measurement (--section inference)")
    args = parser.parse_args(argv)
    if args.section in ("verify", "inference", "data"):
        report = {"verify": run_verify, "inference": run_inference, "data": _run_data}[args.section](args)
        print(report)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(report)
        return 0
    if args.quick:
        args.reps, args.warmup, args.iters = 1, 1, 1
        args.small, args.large = 32, 64
        args.train_batch = args.train_batch_large = args.infer_batch = 4
    report = run(args)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
