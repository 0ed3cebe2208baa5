"""Write and check submission files; a file is only ever renamed into place once it is complete and valid.

One writer (``write_submission``) and one checker (``check_submission``) serve every format of the spec:

- classification: ``id,label``; one row per test image, ids as the sample submission (or the sorted file names),
  labels ImageFolder indices in ``[0, classes)``;
- identity-matching verification: ``id,label``; one row per ``unknown_test`` image, labels a ``known/`` identity
  or the term's no-match label (``n000000``);
- pair scoring verification: the term's header (``ID,Label``; S22 ``id,match``), ids ``0..pairs-1`` in the order of
  the test pairs, scores finite numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .data.layout import Layout, list_classes, list_images
from .errors import UserError
from .io import write_csv

KINDS = ("classification", "verification")


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


def verification_ids(layout: Layout) -> tuple[list[str], list[str]]:
    """(submission ids, ``unknown_test`` file names) in submission order, for identity matching."""
    if layout.unknown_test is None:
        raise UserError(f"no verification test images (unknown_test/) found under {layout.root}")
    files = list_images(layout.unknown_test)
    if layout.ver_sample is None:
        return files, files
    ids = pd.read_csv(layout.ver_sample, dtype=str)["id"].tolist()
    return ids, match_ids(ids, files, layout.ver_sample)


def match_ids(ids: list[str], files: list[str], sample: Path) -> list[str]:
    """Map sample-submission ids to file names: ids are either the file names or positions in sorted order."""
    if set(ids) == set(files):
        return ids
    if all(i.isdigit() for i in ids) and sorted(map(int, ids)) == list(range(len(files))):
        return [files[int(i)] for i in ids]
    raise UserError(
        f"{sample} lists {len(ids)} ids that do not match the {len(files)} test images: re-download the competition"
    )


def write_submission(
    path: Path,
    columns: dict[str, Sequence],
    check: bool = True,
    layout: Layout | None = None,
    kind: str | None = None,
    num_classes: int | None = None,
) -> None:
    """Write a CSV atomically; with ``check`` it refuses missing values, duplicate ids and non-finite scores.

    With ``layout`` the complete file is also checked by ``check_submission`` before it is renamed to ``path``:
    a file that fails never appears under its final name, and a previous good file there stays intact.
    """
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

    def verify(tmp: Path) -> None:
        if layout is not None:
            check_submission(tmp, layout, kind, num_classes, name=path)

    write_csv(path, frame, validate=verify)


def _read(path: Path, name: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise UserError(f"{name} not found: write it first (`facenext predict`, `ensemble` or `verify`)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{name} is not a readable CSV file ({str(e).splitlines()[0]})") from None


def _check_rows(frame: pd.DataFrame, ids: list[str], name: Path, what: str) -> None:
    """Ids exactly ``ids``, in order: names the first missing, extra or duplicated id."""
    found = frame.iloc[:, 0].tolist()
    if found == ids:
        return
    duplicated = frame.iloc[:, 0][frame.iloc[:, 0].duplicated()].tolist()
    missing = sorted(set(ids) - set(found))
    extra = sorted(set(found) - set(ids))
    if duplicated:
        problem = f"duplicated id {duplicated[0]!r}"
    elif missing:
        problem = f"{len(missing)} missing id(s), e.g. {missing[0]!r}"
    elif extra:
        problem = f"{len(extra)} unexpected id(s), e.g. {extra[0]!r}"
    else:
        problem = "ids out of order"
    raise UserError(f"{name}: {problem} ({len(found)} rows, {len(ids)} {what} expected)")


def _check_header(frame: pd.DataFrame, header: Sequence[str], name: Path) -> None:
    if list(frame.columns) != list(header):
        raise UserError(f"{name}: header must be {','.join(header)}, found {','.join(map(str, frame.columns))}")


def _guess_kind(frame: pd.DataFrame, layout: Layout) -> str:
    if layout.term.verification == "pairs" and list(frame.columns) == list(layout.term.pair_header):
        return "verification"
    if layout.test is None:
        return "verification"
    if "label" in frame.columns and frame["label"].str.fullmatch(r"-?\d+").all():
        return "classification"
    return "verification" if layout.unknown_test is not None else "classification"


def check_submission(
    path: Path,
    layout: Layout,
    kind: str | None = None,
    num_classes: int | None = None,
    name: Path | None = None,
) -> None:
    """Raise a one-line UserError unless ``path`` is a valid submission for ``layout``'s competition.

    ``kind``: ``classification`` or ``verification`` (None: guessed from the header and labels; integer labels mean
    classification). ``num_classes`` defaults to the number of ``train/`` identity folders. ``name`` is the file
    name to use in messages (the final name when a temporary file is checked).
    """
    name = name or path
    frame = _read(path, name)
    kind = kind or _guess_kind(frame, layout)
    if kind == "classification":
        _check_header(frame, ["id", "label"], name)
        ids, _ = classification_ids(layout)
        _check_rows(frame, ids, name, "test images")
        classes = num_classes if num_classes is not None else len(list_classes(layout.train))
        labels = pd.to_numeric(frame["label"], errors="coerce")
        bad = labels.isna() | (labels < 0) | (labels >= classes) | (labels % 1 != 0)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise UserError(
                f"{name}: label {frame['label'].iloc[row]!r} of id {frame['id'].iloc[row]!r} is not a class index "
                f"in [0, {classes - 1}]"
            )
    elif kind == "verification" and layout.term.verification == "pairs":
        header = layout.term.pair_header
        _check_header(frame, header, name)
        if layout.test_pairs is None:
            raise UserError(f"no test pairs ({layout.term.test_pairs}) found under {layout.root}")
        pairs = sum(1 for line in layout.test_pairs.read_text().splitlines() if line.strip())
        pairs -= layout.term.pairs_csv  # S22's CSV starts with a header line
        _check_rows(frame, [str(i) for i in range(pairs)], name, "test pairs")
        scores = pd.to_numeric(frame[header[1]], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(scores).all():
            row = int((~np.isfinite(scores)).argmax())
            raise UserError(f"{name}: score {frame[header[1]].iloc[row]!r} of id {row} is not a finite number")
    elif kind == "verification":
        _check_header(frame, ["id", "label"], name)
        ids, _ = verification_ids(layout)
        _check_rows(frame, ids, name, "unknown_test images")
        allowed = set(list_classes(layout.known)) if layout.known is not None else set()
        if layout.term.no_match:
            allowed.add(layout.term.no_match)
        bad = ~frame["label"].isin(allowed)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise UserError(
                f"{name}: label {frame['label'].iloc[row]!r} of id {frame['id'].iloc[row]!r} is neither a known "
                f"identity nor {layout.term.no_match}"
            )
    else:
        raise UserError(f"unknown submission kind {kind!r}: use one of {', '.join(KINDS)}")
