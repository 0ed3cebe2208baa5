"""Data-pipeline throughput per worker: this project's loader against the seed's, and with the decoded cache.

Operational script, not library code; run through `scripts/bench.py --section data`. Sources are 224 px JPEGs
written by `facenext.data.sample.write_sample_competition(..., size=224)`. Each pipeline decodes and augments
every training image in-process (num_workers=0, one thread: what one DataLoader worker does), the pipelines take
turns within each repetition, and the table reports medians of images/s.

- seed: PIL decode + torchvision transforms of the seed's augmentation list (RandomHorizontalFlip,
  ColorJitter(0.16, 0.15, 0.1), RandomRotation(18), RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
  RandomPerspective(0.2, p=0.2), ToTensor, Normalize, RandomErasing(p=0.3, scale=(0.05, 0.1))), with a Resize
  first when training below the stored size;
- ours: `FaceImages` with the `seed` preset (`FaceAugment`: one colour matrix and one warp) and JPEG draft
  decoding. Its images stay uint8; `BatchToModel` normalises whole batches on the training device, and its cost
  per image on this CPU is reported beside the table (on a GPU it is one fused elementwise pass per batch);
- ours + cache: the same with the decoded cache (`data.cache=true`), built before timing.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import albumentations
import cv2
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from facenext.config import FACE_MEAN, FACE_STD
from facenext.data.cache import attach_cache
from facenext.data.datasets import FaceImages, image_folder
from facenext.data.layout import find_layout, list_classes
from facenext.data.sample import write_sample_competition
from facenext.data.transforms import BatchToModel, train_transform


class SeedImages(torch.utils.data.Dataset):
    """The seed's pipeline: torchvision ImageFolder-style PIL loading and its transform list."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, source: int) -> None:
        self.paths, self.labels = paths, labels
        resize = [T.Resize(size)] if size != source else []
        self.transform = T.Compose(
            [
                *resize,
                T.RandomHorizontalFlip(),
                T.ColorJitter(brightness=0.16, contrast=0.15, saturation=0.1),
                T.RandomRotation(18),
                T.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                T.RandomPerspective(0.2, p=0.2),
                T.ToTensor(),
                T.Normalize(FACE_MEAN, FACE_STD),
                T.RandomErasing(p=0.3, scale=(0.05, 0.1)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[index], "rb") as f:
            image = Image.open(f).convert("RGB")  # torchvision's pil_loader
        return self.transform(image), self.labels[index]


def _pass(dataset, keys) -> float:
    tic = time.perf_counter()
    for key in keys:
        image, _ = dataset[key]
    assert image.dtype in (torch.float32, torch.uint8)
    return len(keys) / (time.perf_counter() - tic)


def _normalise_us(size: int, batch: int = 64, reps: int = 20) -> float:
    """Microseconds per image of ``BatchToModel`` on this CPU (one thread): the work the workers no longer do."""
    to_model = BatchToModel(FACE_MEAN, FACE_STD, "cpu", channels_last=True)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    to_model(images)
    tic = time.perf_counter()
    for _ in range(reps):
        to_model(images)
    return (time.perf_counter() - tic) / reps / batch * 1e6


def run_data(args: argparse.Namespace) -> str:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    identities, per_identity, reps = (4, 6, 1) if args.quick else (20, 15, 5)
    source = 224
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        write_sample_competition(
            Path(tmp) / "data", "f23", identities=identities, images_per_identity=per_identity, size=source, seed=0
        )
        print(f"sample data written in {time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
        layout = find_layout(Path(tmp) / "data")
        paths, labels = image_folder(layout.train, list_classes(layout.train))
        sizes = (112, 224)
        pipelines: dict[tuple[int, str], tuple[object, list]] = {}
        build_s = {}
        for size in sizes:
            tf = train_transform("seed", size, FACE_MEAN)
            ours_keys = [(0, 0, i) for i in range(len(paths))]
            pipelines[size, "seed"] = (SeedImages(paths, labels, size, source), list(range(len(paths))))
            pipelines[size, "ours"] = (FaceImages(paths, labels, tf, size), ours_keys)
            cached = FaceImages(paths, labels, tf, size)
            tic = time.perf_counter()
            attach_cache(cached, Path(tmp) / "cache")
            build_s[size] = time.perf_counter() - tic
            pipelines[size, "cache"] = (cached, ours_keys)
        names = ("seed", "ours", "cache")
        times: dict[tuple[int, str], list[float]] = {}
        start = time.perf_counter()
        for rep in range(reps + 1):  # round 0 warms up (page cache, lazy imports, memory maps)
            for size in sizes:
                order = names[rep % 3 :] + names[: rep % 3]  # rotate who goes first
                for name in order:
                    dataset, keys = pipelines[size, name]
                    rate = _pass(dataset, keys)
                    if rep:
                        times.setdefault((size, name), []).append(rate)
            print(f"round {rep}/{reps} done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    normalise = {size: _normalise_us(size) for size in sizes}
    lines = [
        "# Data-pipeline benchmark: images per second per worker",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"albumentations {albumentations.__version__}, OpenCV {cv2.__version__}, Pillow {PIL.__version__}",
        f"- CPU: {cpu_model()}; one thread (torch and OpenCV), in-process loop over the Dataset (num_workers=0), which "
        "is what each DataLoader worker does",
        f"- {len(paths)} synthetic {source}x{source} JPEG faces (`write_sample_competition(..., size={source})`); "
        f"the seed's augmentation list in both pipelines; {reps} timed rounds after one warm-up round, pipelines "
        "interleaved (rotating order) within each round; medians",
        "- decoded cache build (not in the rates): "
        + ", ".join(f"{s} px {build_s[s]:.2f} s" for s in sizes)
        + " for the whole split",
        "- the workers' output: seed float32 CHW (4 bytes a value), ours uint8 HWC (1 byte); normalising on the "
        "device (`BatchToModel`, not in the rates) costs "
        + ", ".join(f"{normalise[s]:.0f} µs per image at {s} px" for s in sizes)
        + " on this CPU, batches of 64",
        "",
        "| source -> training size | seed (PIL + torchvision) | ours (FaceAugment + draft) | ours + cache "
        "| ours/seed | cache/seed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        m = {n: med[size, n] for n in names}
        lines.append(
            f"| {source} -> {size} px | {m['seed']:.0f} | {m['ours']:.0f} | {m['cache']:.0f} | "
            f"{m['ours'] / m['seed']:.2f}x | {m['cache'] / m['seed']:.2f}x |"
        )
    lines += [
        "",
        "Spread (min-max images/s over the rounds):",
        "",
        "| size | seed | ours | ours + cache |",
        "|---|---:|---:|---:|",
    ]
    for size in sizes:
        cells = " | ".join(f"{min(times[size, n]):.0f}-{max(times[size, n]):.0f}" for n in names)
        lines.append(f"| {source} -> {size} px | {cells} |")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(run_data(parser.parse_args()))
