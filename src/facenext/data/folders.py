"""Where a competition's files lie, whatever its term: the data root's folders, the download's marker, the file names
every term shares. Nothing here knows a term or a family: ``facenext.competitions`` builds layouts from these, and
``facenext.data.layout`` finds them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

LABELS_FILE = "labels.txt"  # S25 on: one `<image_file> <class_id>` a line, file names relative to images/
IMAGES_DIR = "images"
MARKER = ".complete"  # written by `facenext download` (slug) and `facenext sample-data` (term, sample)
SAMPLE_GLOB = "*sample_submission*.csv"


def candidates(root: Path) -> Iterator[Path]:
    """The root, its subfolders and theirs, breadth first: a competition is found wherever a download unpacked it."""
    yield root
    level = [root]
    for _ in range(2):
        level = [child for parent in level for child in _subdirs(parent)]
        yield from level


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "answers")
    except OSError:
        return []


def chain(folder: Path, root: Path) -> list[Path]:
    """``folder`` and its parents up to ``root`` included."""
    folders = [folder]
    while folders[-1] != root and folders[-1].parent != folders[-1] and root in folders[-1].parents:
        folders.append(folders[-1].parent)
    return folders


def read_marker(folder: Path, root: Path) -> dict:
    """The nearest ``.complete`` marker's content between ``folder`` and ``root`` ({} when none is readable)."""
    for path in chain(folder, root):
        try:
            data = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def optional(base: Path | None, rel: str | None) -> Path | None:
    if base is None or rel is None:
        return None
    path = base / rel
    return path if path.exists() else None


def sample_submissions(folder: Path, slugs: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """Every ``*sample_submission*.csv`` in ``folder`` and its subfolders (two levels), and in the folder above it
    when that one is named after one of ``slugs``: a zip that holds ``hw2p2_data/`` and the sample beside it unpacks
    to ``<slug>/sample_submission.csv`` (Kaggle: ``/kaggle/input/<slug>/``)."""
    found = [p for level in ("", "*/", "*/*/") for p in folder.glob(level + SAMPLE_GLOB) if p.is_file()]
    above = folder.absolute().parent
    if above.name in slugs:
        found += [p for p in above.glob(SAMPLE_GLOB) if p.is_file()]
    return tuple(sorted(set(found)))
