"""Write and check submission files; a file is only ever renamed into place once it is complete and valid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .data.layout import Layout, list_images
from .engine.checkpoint import atomic_write
from .errors import UserError


def classification_ids(layout: Layout) -> tuple[list[str], list[str]]:
    """(submission ids, test file names) in submission order.

    The sample submission, when the competition ships one, decides the id format and row order.
    """
    if layout.test is None:
        raise UserError(f"the {layout.term.key} competition has no classification test split: use --split dev")
    files = list_images(layout.test)
    if not files:
        raise UserError(f"{layout.test} holds no images: the download may be incomplete, run `make download` again")
    if layout.cls_sample is None:
        return files, files
    ids = pd.read_csv(layout.cls_sample, dtype=str)["id"].tolist()
    return ids, match_ids(ids, files, layout.cls_sample)


def match_ids(ids: list[str], files: list[str], sample: Path) -> list[str]:
    """Map sample-submission ids to file names: ids are either the file names or positions in sorted order."""
    if set(ids) == set(files):
        return ids
    if all(i.isdigit() for i in ids) and sorted(map(int, ids)) == list(range(len(files))):
        return [files[int(i)] for i in ids]
    raise UserError(
        f"{sample} lists {len(ids)} ids that do not match the {len(files)} test images: re-download the competition"
    )


def write_submission(path: Path, columns: dict[str, Sequence], check: bool = True) -> None:
    """Write a CSV atomically; with ``check`` it refuses missing values and duplicate ids."""
    frame = pd.DataFrame(columns)
    if check:
        id_column = frame.columns[0]
        if frame[id_column].duplicated().any():
            raise UserError(f"refusing to write {path}: duplicate ids")
        if frame.isna().any().any():
            raise UserError(f"refusing to write {path}: missing values")
        numeric = frame.select_dtypes("number")
        if not np.isfinite(numeric.to_numpy(dtype=float)).all():
            raise UserError(f"refusing to write {path}: non-finite scores")
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def check_classification_submission(path: Path, layout: Layout, num_classes: int) -> None:
    """Header ``id,label``, one row per test image in the sample's order, labels in [0, num_classes)."""
    frame = pd.read_csv(path, dtype={"id": str})
    if list(frame.columns) != ["id", "label"]:
        raise UserError(f"{path}: header must be id,label, found {','.join(frame.columns)}")
    ids, _ = classification_ids(layout)
    if frame["id"].tolist() != ids:
        raise UserError(f"{path}: ids differ from the test images ({len(frame)} rows, {len(ids)} expected)")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or (labels < 0).any() or (labels >= num_classes).any() or (labels % 1 != 0).any():
        raise UserError(f"{path}: labels must be class indices in [0, {num_classes - 1}]")
