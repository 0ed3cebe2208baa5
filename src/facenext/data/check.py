"""`facenext check-data`: what a competition folder holds, and everything in it that would break training.

Every image is decoded (with a thread per core), so unreadable files are found before a run starts instead of
being skipped during it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from ..competitions.families import pair_image_base
from ..errors import UserError
from .datasets import DECODE_ERRORS
from .layout import (
    IMAGE_SUFFIXES,
    LABELS_FILE,
    Layout,
    find_layout,
    label_problems,
    list_classes,
    read_labels,
    read_pairs,
)

logger = logging.getLogger(__name__)

SHOW = 5  # names shown per problem
SIZE_SAMPLE = 8  # images per split whose size is read


@dataclass
class SplitReport:
    name: str
    folder: Path
    identities: int | None  # None for flat folders
    images: list[Path]
    sizes: Counter = field(default_factory=Counter)


@dataclass
class Report:
    layout: Layout
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[tuple[str, list[str]]] = field(default_factory=list)  # (what, examples)
    notes: list[str] = field(default_factory=list)  # pair files, test labels: one line each

    def problem(self, what: str, names: list[str]) -> None:
        self.problems.append((what, [str(n) for n in names]))


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except DECODE_ERRORS:
        return False


def _scan_identity_split(report: Report, name: str, folder: Path) -> tuple[SplitReport, set[str]]:
    """An identity-folder split or an S25 labels.txt split: its images and identities, with problems noted."""
    images: list[Path] = []
    if (folder / LABELS_FILE).is_file():
        for problem in label_problems(folder, report.layout.term.num_classes):
            report.problem(f"{name}: {problem.what}", problem.examples)
        items = read_labels(folder)
        identities = {identity for _, identity in items}
        missing = [rel for rel, _ in items if not (folder / rel).is_file()]
        if missing:
            report.problem(f"{name}: {len(missing)} files listed in {LABELS_FILE} do not exist", missing)
        listed = {rel for rel, _ in items}
        images = [folder / rel for rel, _ in items if (folder / rel).is_file()]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            unlisted = [f"{sub.name}/{e.name}" for e in os.scandir(sub) if e.is_file()]
            unlisted = [u for u in unlisted if u not in listed and _is_image(u)]
            if unlisted:
                report.problem(f"{name}: {len(unlisted)} images not listed in {LABELS_FILE}", sorted(unlisted))
        others = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name != LABELS_FILE)
    else:
        identities = set(list_classes(folder))
        empty, others = [], sorted(e.name for e in os.scandir(folder) if e.is_file())
        for identity in sorted(identities):
            files = sorted(e.name for e in os.scandir(folder / identity) if e.is_file())
            found = [f for f in files if _is_image(f)]
            others += [f"{identity}/{f}" for f in files if not _is_image(f)]
            if not found:
                empty.append(identity)
            images += [folder / identity / f for f in found]
        if empty:
            report.problem(f"{name}: {len(empty)} identity folders hold no images", empty)
    if others:
        report.problem(f"{name}: {len(others)} files that are not images", others)
    return SplitReport(name, folder, len(identities), images), identities


def _scan_flat(report: Report, name: str, folder: Path) -> SplitReport:
    files = sorted(e.name for e in os.scandir(folder) if e.is_file())
    others = [f for f in files if not _is_image(f)]
    if others:
        report.problem(f"{name}: {len(others)} files that are not images", others)
    images = [folder / f for f in files if _is_image(f)]
    for sub in os.scandir(folder):  # pair-image folders (S22) keep their images one level down
        if sub.is_dir():
            images += [Path(sub.path) / e.name for e in os.scandir(sub.path) if e.is_file() and _is_image(e.name)]
    return SplitReport(name, folder, None, sorted(images))


def check_data(root: str | Path, term: str = "auto", threads: int | None = None) -> Report:
    """Scan the competition under ``root``: splits, identities, image counts and sizes, and every problem."""
    layout = find_layout(root, term)
    report = Report(layout)
    train, train_ids = _scan_identity_split(report, "train", layout.train)
    report.splits.append(train)
    if len(train_ids) < 2:
        report.problem(f"train: {len(train_ids)} identities, classification needs at least 2", [layout.train])
    if layout.dev is not None:
        dev, dev_ids = _scan_identity_split(report, "dev", layout.dev)
        report.splits.append(dev)
        strangers = sorted(dev_ids - train_ids)
        if strangers:
            report.problem(f"dev: {len(strangers)} identities missing from train", strangers)
    if layout.known is not None:
        report.splits.append(_scan_identity_split(report, "known", layout.known)[0])
    for name in ("test", "unknown_dev", "unknown_test", "ver_images"):
        folder = getattr(layout, name)
        if folder is not None and folder.is_dir():
            report.splits.append(_scan_flat(report, name, folder))

    _check_test_labels(report)
    for check in layout.family.data_checks:
        DATA_CHECKS[check](report)

    everything = [(split, path) for split in report.splits for path in split.images]
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        ok = list(pool.map(lambda item: _decodes(item[1]), everything, chunksize=64))
    bad = [path for (_, path), good in zip(everything, ok, strict=True) if not good]
    if bad:
        report.problem(f"{len(bad)} unreadable images", [str(p.relative_to(layout.root)) for p in bad])
    bad_set = set(bad)
    for split in report.splits:
        readable = [p for p in split.images if p not in bad_set]
        step = max(1, len(readable) // SIZE_SAMPLE)
        for path in readable[::step][:SIZE_SAMPLE]:
            with Image.open(path) as img:
                split.sizes[f"{img.size[0]}x{img.size[1]} {img.mode}"] += 1
    return report


def _check_test_labels(report: Report) -> None:
    """The classification test split's labels.txt, where the download ships one (S25 to S26)."""
    layout = report.layout
    if layout.test_labels is not None:
        report.notes.append(f"test labels: {len(read_labels(layout.test_labels.parent))} lines [{layout.test_labels}]")
        for problem in label_problems(layout.test_labels.parent, layout.term.num_classes):
            report.problem(f"test: {problem.what}", problem.examples)


def _check_pairs(report: Report) -> None:
    """The pair files (at the root or under cls_data/): their pairs, and every image they name."""
    layout, term = report.layout, report.layout.term
    for what, path, labelled in (("val_pairs", layout.val_pairs, True), ("test_pairs", layout.test_pairs, False)):
        if path is None:
            report.problem(f"{what}: {term.val_pairs if labelled else term.test_pairs} not found", [layout.root])
            continue
        try:
            pairs = read_pairs(path, labelled, csv=term.pairs_csv)
        except UserError as e:  # reported with the rest: a broken pair file is one problem among others
            report.problem(f"{what}: {e}", [path.name])
            continue
        names = pd.unique(pd.concat([pairs["img1"], pairs["img2"]]))
        base = pair_image_base(layout, str(names[0])) if len(names) else path.parent
        missing = [n for n in names if not (base / n).is_file()]
        genuine = f", {int((pairs['label'].astype(int) == 1).sum())} genuine" if labelled else ""
        report.notes.append(f"{what}: {len(pairs)} pairs{genuine}, {len(names)} images [{path}]")
        if missing:
            report.problem(f"{what}: {len(missing)} images named in {path.name} do not exist under {base}", missing)
    if layout.ver_images is None:
        report.problem(f"ver_images: {term.ver_images}/ not found", [layout.root])


def _check_test_split(report: Report) -> None:
    layout = report.layout
    if layout.test is None:
        report.problem(f"test: {layout.term.test}/images not found (the combined submission needs it)", [layout.root])


# What each of a family's ``data_checks`` checks.
DATA_CHECKS = {"pairs": _check_pairs, "test": _check_test_split}


def print_report(report: Report) -> None:
    layout = report.layout
    logger.info(f"term {layout.term.key} ({layout.term.title}) under {layout.root}")
    for split in report.splits:
        who = f"{split.identities} identities, " if split.identities is not None else ""
        sizes = ", ".join(f"{k} x{v}" for k, v in split.sizes.most_common())
        logger.info(
            f"  {split.name:<12} {who}{len(split.images)} images  sizes (sampled): {sizes or '-'}  [{split.folder}]"
        )
    for note in report.notes:
        logger.info(f"  {note}")
    for what, names in report.problems:
        more = f", ... ({len(names) - SHOW} more)" if len(names) > SHOW else ""
        logger.info(f"  problem: {what}: {', '.join(names[:SHOW])}{more}")
    if not report.problems:
        logger.info("  no problems found")


def check_command(root: str | Path, term: str = "auto") -> Report:
    """Print the report; a folder with problems is a user error (exit 2, one-line summary)."""
    report = check_data(root, term)
    print_report(report)
    if report.problems:
        raise UserError(f"{len(report.problems)} problems in {root}: " + "; ".join(w for w, _ in report.problems))
    return report
