"""Write, read and check submission files; a file is only ever renamed into place once it is complete and valid.

One writer (``write_submission``), one reader (``read_submission``) and one checker (``check_submission``) serve
``predict``, ``verify``, ``ensemble``, ``check-submission`` and ``submit``. Each format is one class:

- ``classification``: ``id,label``; one row per test image, ids as the sample submission (or the sorted file
  names), labels class indices in ``[0, classes)`` (S25 on: the class ids of ``labels.txt``, the same numbers);
- ``identity``: ``id,label``; one row per ``unknown_test`` image, labels a ``known/`` identity or ``n000000``;
- ``pairs``: the term's header (``ID,Label``; S22 ``id,match``), ids ``0..pairs-1`` in test-pair order, finite scores;
- ``cls+ver-rows`` (F26, an assumption: the real columns were not found): header ``ID,Label``; one row per test
  image (``ID`` its file name, ``Label`` its class id), then one row per test pair (``ID`` 0..pairs-1 in
  ``test_pairs.txt`` order, ``Label`` the score);
- ``sample``: F26 with a ``*sample_submission*.csv`` in the download: its header, ids and row order, each id
  being a test image's file name (or stem), or else a test pair: the pair rows' ids run ``0..pairs-1`` or
  ``1..pairs`` in ``test_pairs.txt`` order, or name each pair's two images. A sample in any other scheme is refused:
  a row must never score another pair than the one its id names.

A sample in the download always decides the combined file's format: a format named by ``--format`` or a config
that would write another file than the sample's is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .competitions import KINDS
from .data.layout import Layout, list_classes, list_images, read_pairs
from .errors import UserError
from .io import read_json, write_csv


def classification_ids(layout: Layout) -> tuple[list[str], list[str]]:
    """(submission ids, test file names) in submission order.

    The sample submission, when the competition ships one, decides the id format and row order.
    """
    if layout.test is None:
        if layout.term.test is not None:
            raise UserError(f"no classification test images ({layout.term.test}/) under {layout.root}: re-download it")
        raise UserError(
            f"the {layout.term.key.upper()} competition has no classification test split "
            "(`facenext predict RUN --split dev` predicts the dev split)"
        )
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


def read_submission(path: Path, name: Path | None = None) -> pd.DataFrame:
    """A submission CSV as strings, in any known format: two or more columns, no duplicate ids, no empty cells."""
    name = name or path
    if not Path(path).is_file():
        raise UserError(f"{name} not found: write it first (`facenext predict`, `ensemble` or `verify`)")
    try:
        # Only empty cells are missing: labels such as "NA" or "n000000" are values.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{name} is not a readable CSV file ({str(e).splitlines()[0]})") from None
    if frame.shape[1] < 2:
        raise UserError(f"{name}: expected an id column and a value column, found {','.join(map(str, frame.columns))}")
    ids = frame.iloc[:, 0]
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise UserError(
            f"{name}: {len(duplicated)} duplicate ids (duplicated id {duplicated.iloc[0]!r}): rewrite the file"
        )
    if frame.isna().any().any():
        raise UserError(f"{name}: {int(frame.isna().any(axis=1).sum())} rows with missing values: rewrite the file")
    return frame


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


def _check_class_labels(values: pd.Series, ids: pd.Series, classes: int, name: Path) -> None:
    labels = pd.to_numeric(values, errors="coerce")
    bad = ~values.str.fullmatch(r"\d+") | labels.isna() | (labels >= classes)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise UserError(
            f"{name}: label {values.iloc[row]!r} of id {ids.iloc[row]!r} is not a class index in [0, {classes - 1}]"
        )


def _check_scores(values: pd.Series, ids: pd.Series, name: Path) -> None:
    scores = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(scores).all():
        row = int((~np.isfinite(scores)).argmax())
        raise UserError(f"{name}: score {values.iloc[row]!r} of id {ids.iloc[row]!r} is not a finite number")


def test_pair_count(layout: Layout) -> int:
    if layout.test_pairs is None:
        raise UserError(f"no test pairs ({layout.term.test_pairs}) found under {layout.root}")
    return len(read_pairs(layout.test_pairs, labelled=False, csv=layout.term.pairs_csv))


def _default_classes(layout: Layout, num_classes: int | None) -> int:
    return num_classes if num_classes is not None else len(list_classes(layout.train))


# ---------------------------------------------------------------------------------------------------------------
# Formats: one class each
# ---------------------------------------------------------------------------------------------------------------


class SubmissionFormat:
    """What one kind of submission file looks like: header, ids in order, and the values each row must hold."""

    name = ""
    parts: tuple[str, ...] = ()  # which predictions it carries: "classification", "pairs", "identity"

    def header(self, layout: Layout) -> tuple[str, str]:
        return ("id", "label")

    def check(self, frame: pd.DataFrame, layout: Layout, name: Path, num_classes: int | None = None) -> None:
        raise NotImplementedError

    def columns(self, layout: Layout, labels: Sequence[int] = (), scores: Sequence[float] = ()) -> dict[str, list]:
        """The file's columns from class labels (test images in ``classification_ids`` order) and pair scores."""
        raise NotImplementedError


class ClassificationFormat(SubmissionFormat):
    name = "classification"
    parts = ("classification",)

    def check(self, frame: pd.DataFrame, layout: Layout, name: Path, num_classes: int | None = None) -> None:
        _check_header(frame, self.header(layout), name)
        ids, _ = classification_ids(layout)
        _check_rows(frame, ids, name, "test images")
        _check_class_labels(frame["label"], frame["id"], _default_classes(layout, num_classes), name)

    def columns(self, layout: Layout, labels: Sequence[int] = (), scores: Sequence[float] = ()) -> dict[str, list]:
        return {"id": classification_ids(layout)[0], "label": list(labels)}


class IdentityFormat(SubmissionFormat):
    name = "identity"
    parts = ("identity",)

    def check(self, frame: pd.DataFrame, layout: Layout, name: Path, num_classes: int | None = None) -> None:
        _check_header(frame, self.header(layout), name)
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


class PairFormat(SubmissionFormat):
    name = "pairs"
    parts = ("pairs",)

    def header(self, layout: Layout) -> tuple[str, str]:
        return layout.term.pair_header

    def check(self, frame: pd.DataFrame, layout: Layout, name: Path, num_classes: int | None = None) -> None:
        header = self.header(layout)
        _check_header(frame, header, name)
        _check_rows(frame, [str(i) for i in range(test_pair_count(layout))], name, "test pairs")
        _check_scores(frame[header[1]], frame[header[0]], name)

    def columns(self, layout: Layout, labels: Sequence[int] = (), scores: Sequence[float] = ()) -> dict[str, list]:
        id_col, score_col = self.header(layout)
        return {id_col: list(range(len(scores))), score_col: list(scores)}


class CombinedRowsFormat(SubmissionFormat):
    """F26 (assumed): classification rows (file name, class id), then pair rows (0..pairs-1, score), ``ID,Label``."""

    name = "cls+ver-rows"
    parts = ("classification", "pairs")

    def header(self, layout: Layout) -> tuple[str, str]:
        return ("ID", "Label")

    def _ids(self, layout: Layout) -> tuple[list[str], list[str]]:
        return classification_ids(layout)[0], [str(i) for i in range(test_pair_count(layout))]

    def check(self, frame: pd.DataFrame, layout: Layout, name: Path, num_classes: int | None = None) -> None:
        _check_header(frame, self.header(layout), name)
        images, pairs = self._ids(layout)
        _check_rows(frame, images + pairs, name, f"rows ({len(images)} test images + {len(pairs)} test pairs)")
        n = len(images)
        _check_class_labels(frame["Label"][:n], frame["ID"][:n], _default_classes(layout, num_classes), name)
        _check_scores(frame["Label"][n:], frame["ID"][n:], name)

    def columns(self, layout: Layout, labels: Sequence[int] = (), scores: Sequence[float] = ()) -> dict[str, list]:
        images, pairs = self._ids(layout)
        return {"ID": images + pairs, "Label": [int(x) for x in labels] + [float(x) for x in scores]}


# How a sample may name a test pair by its images: "<imgA><sep><imgB>", with or without the extension.
PAIR_NAME_SEPARATORS = (" ", "_", "-", ",", ";", "|", "+", ":", "/", "__")
UNKNOWN_SCHEME = "FaceNext cannot tell which test image or pair each row is: report the sample's first lines"


def _pair_name_index(layout: Layout) -> dict[str, int | None]:
    """Each way a sample may name a test pair by its two images -> the pair's position (None: two pairs share it)."""
    pairs = read_pairs(layout.test_pairs, labelled=False, csv=layout.term.pairs_csv)
    index: dict[str, int | None] = {}
    for j, (a, b) in enumerate(zip(pairs["img1"], pairs["img2"], strict=True)):
        for x, y in ((a, b), (Path(a).stem, Path(b).stem)):
            for sep in PAIR_NAME_SEPARATORS:
                key = f"{x}{sep}{y}"
                index[key] = j if index.get(key, j) == j else None
    return index


def _pair_positions(ids: list[str], layout: Layout, pairs: int, sample: Path) -> list[int]:
    """The test pair each pair row of a sample scores, from its id: ``0..pairs-1`` or ``1..pairs`` in
    ``test_pairs.txt`` order, or the pair's two image names (any row order). Anything else is refused: following
    the rows' order whatever their ids would put scores on other pairs than the ids name."""
    numbers = [int(i) for i in ids] if all(i.isdigit() for i in ids) else None  # "7" or "00007"
    if numbers in (list(range(pairs)), list(range(1, pairs + 1))):
        return list(range(pairs))
    by_name = _pair_name_index(layout)
    found = [j for j in (by_name.get(i) for i in ids) if j is not None]
    if len(found) == len(ids) and sorted(found) == list(range(pairs)):
        return found
    raise UserError(
        f"{sample}: its {len(ids)} pair rows have ids {', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}: "
        f"neither 0..{pairs - 1} nor 1..{pairs} in {layout.term.test_pairs} order, nor each pair's image names; "
        + UNKNOWN_SCHEME
    )


class SampleFormat(SubmissionFormat):
    """Follows the competition's own sample submission: its header, its ids, its row order."""

    name = "sample"
    parts = ("classification", "pairs")

    def __init__(self, sample: Path) -> None:
        self.sample = sample

    def _read(self, layout: Layout) -> tuple[pd.DataFrame, list[tuple[str, int]]]:
        """The sample, and for each row what it predicts: ``("image", position in classification_ids)`` or
        ``("pair", position in test_pairs.txt)``."""
        frame = read_submission(self.sample)
        if frame.shape[1] != 2:
            raise UserError(f"{self.sample} has columns {','.join(frame.columns)}: {UNKNOWN_SCHEME}")
        images, _ = classification_ids(layout)
        where = {name: i for i, name in enumerate(images)}
        where.update({Path(name).stem: i for i, name in enumerate(images)})
        ids = frame.iloc[:, 0].tolist()
        found = sorted(where[i] for i in ids if i in where)
        pairs = test_pair_count(layout)
        pair_ids = [i for i in ids if i not in where]
        if found != list(range(len(images))) or len(pair_ids) != pairs:
            raise UserError(
                f"{self.sample}: its {len(frame)} ids (first {', '.join(ids[:3])}) are not the {len(images)} test "
                f"images and {pairs} test pairs: {UNKNOWN_SCHEME}"
            )
        pair_of = iter(_pair_positions(pair_ids, layout, pairs, self.sample))
        return frame, [("image", where[i]) if i in where else ("pair", next(pair_of)) for i in ids]

    def header(self, layout: Layout) -> tuple[str, str]:
        return tuple(read_submission(self.sample).columns[:2])  # type: ignore[return-value]

    def check(self, frame: pd.DataFrame, layout: Layout, name: Path, num_classes: int | None = None) -> None:
        sample, rows = self._read(layout)
        _check_header(frame, list(sample.columns), name)
        _check_rows(frame, sample.iloc[:, 0].tolist(), name, f"rows (as {self.sample.name})")
        is_image = pd.Series([kind == "image" for kind, _ in rows], index=frame.index)
        values, ids = frame.iloc[:, 1], frame.iloc[:, 0]
        _check_class_labels(values[is_image], ids[is_image], _default_classes(layout, num_classes), name)
        _check_scores(values[~is_image], ids[~is_image], name)

    def columns(self, layout: Layout, labels: Sequence[int] = (), scores: Sequence[float] = ()) -> dict[str, list]:
        sample, rows = self._read(layout)
        values = [int(labels[k]) if kind == "image" else float(scores[k]) for kind, k in rows]
        id_col, value_col = sample.columns[:2]
        return {id_col: sample.iloc[:, 0].tolist(), value_col: values}


FORMATS: dict[str, type[SubmissionFormat]] = {
    f.name: f for f in (ClassificationFormat, IdentityFormat, PairFormat, CombinedRowsFormat)
}
# The formats that write both parts of a combined (F26) file: the only ones such a competition takes
COMBINED_FORMATS = (CombinedRowsFormat.name, SampleFormat.name)


def submission_record(file: str | Path) -> dict:
    """What the writer recorded beside a submission (``<file>.json``: its runs, format and term); empty when
    nothing was recorded or the record cannot be read."""
    path = Path(file).with_suffix(".json")
    try:
        record = read_json(path) if path.is_file() else {}
    except UserError:
        return {}
    return record if isinstance(record, dict) else {}


SAMPLE_FIX = "pass --format sample, or drop that setting"


def submission_format(
    layout: Layout, requested: str | None = None, source: str | None = None, fix: str = SAMPLE_FIX
) -> SubmissionFormat:
    """The format of the term's (combined) submission: the competition's sample submission whenever the download
    has one, else ``requested`` (``--format`` or predict.submission_format), else the term's own; never a guess.

    A ``requested`` format that would write another file than the sample (another header, other ids or another
    row order) is refused in one line naming both; ``source`` says where it was named (``--format``, a config), and
    ``fix`` what to do (a Kaggle notebook takes no flag).
    """
    term = layout.term
    if requested and requested != "auto" and requested != "sample" and requested not in FORMATS:
        raise UserError(f"unknown submission format {requested!r}: use one of {', '.join(COMBINED_FORMATS)}")
    if layout.family.one_file and layout.samples:
        if len(layout.samples) > 1:
            names = ", ".join(str(p) for p in layout.samples)
            raise UserError(
                f"several sample submissions in the download ({names}): FaceNext follows one; move the others away"
            )
        sample = SampleFormat(layout.samples[0])
        if requested and requested not in ("auto", "sample"):
            _same_as_sample(FORMATS[requested](), sample, layout, source or f"the format named ({requested})", fix)
        return sample
    if requested == "sample":
        raise UserError(f"--format sample needs a *sample_submission*.csv in the download, and {layout.root} has none")
    if requested and requested != "auto":
        if requested not in COMBINED_FORMATS:  # a format of one part would pass (or write) half the file as all of it
            raise UserError(
                f"{source or f'--format {requested}'}: the {term.key.upper()} competition scores one file with both "
                f"tasks, in one of these formats: {', '.join(COMBINED_FORMATS)}"
            )
        return FORMATS[requested]()
    if term.submission_format:
        return FORMATS[term.submission_format]()
    raise UserError(
        f"the {term.key.upper()} submission format is not known and {layout.root} has no *sample_submission*.csv: "
        "pass --format cls+ver-rows (the README's assumed format) or set predict.submission_format"
    )


def _same_as_sample(named: SubmissionFormat, sample: SampleFormat, layout: Layout, source: str, fix: str) -> None:
    """Refuse ``named`` unless it writes the sample's file: its header, and its ids in its order."""
    frame, _ = sample._read(layout)
    header, ids = list(map(str, frame.columns)), frame.iloc[:, 0].tolist()
    why = f"{named.name} is not a format of a file with both parts"
    if set(named.parts) == {"classification", "pairs"}:
        images, pairs = len(classification_ids(layout)[0]), test_pair_count(layout)
        columns = named.columns(layout, [0] * images, [0.0] * pairs)
        mine = list(map(str, next(iter(columns.values()))))
        if list(columns) == header and mine == ids:
            return
        if list(columns) != header:
            why = f"{named.name} writes the header {','.join(columns)}, the sample {','.join(header)}"
        else:
            k = next(k for k, (a, b) in enumerate(zip(mine, ids, strict=True)) if a != b)  # same count: _read
            why = f"{named.name} writes row {k + 1} as {mine[k]!r}, the sample as {ids[k]!r}"
    raise UserError(
        f"{sample.sample} in the download decides the submission's format, and {source} disagrees ({why}): {fix}"
    )


def _kind_format(layout: Layout, kind: str, requested: str | None, source: str | None = None) -> SubmissionFormat:
    if kind == "classification":
        return ClassificationFormat()
    if kind == "verification":
        return FORMATS[layout.family.verifier]()
    if kind == "combined":
        return submission_format(layout, requested, source)
    raise UserError(f"unknown submission kind {kind!r}: use one of {', '.join(KINDS)}")


def scored_kinds(layout: Layout) -> tuple[str, ...]:
    """The submission kinds the term's competitions score, as its family says: the combined task (F26) one file; a
    pair-scoring term of one competition (S26) the test pairs' scores alone; two competitions (S22, identity
    matching) one file each."""
    return layout.family.scored_kinds(layout.term)


def _refuse_unscored(kind: str, layout: Layout, name: Path, guessed: bool) -> None:
    """A one-line UserError when the term's competition does not score a ``kind`` file."""
    scored = scored_kinds(layout)
    if kind in scored:
        return
    key = layout.term.key.upper()
    wanted = {
        ("combined",): "one file with both tasks (`facenext ensemble`, or `predict` and `verify`, write it)",
        ("verification",): (
            f"only the test pairs' scores ({','.join(layout.term.pair_header)}, one row per test pair: "
            "`facenext verify RUN` writes it)"
        ),
    }.get(scored, " or ".join(scored) + " files")
    looks = f"{name} looks like a {kind} file" if guessed else f"{name} was checked as a {kind} file (--kind)"
    raise UserError(f"{looks}, but the {key} competition scores {wanted}")


def _guess_kind(frame: pd.DataFrame, layout: Layout) -> str:
    told = layout.family.kind_of_columns(list(frame.columns), layout.term)
    if told is not None:
        return told
    if layout.test is None:
        return "verification"
    if "label" in frame.columns and frame["label"].str.fullmatch(r"-?\d+").all():
        return "classification"
    if "classification" not in scored_kinds(layout):  # S25 to S26: anything else is meant as pair scores
        return "verification"
    return "verification" if layout.unknown_test is not None else "classification"


def check_submission(
    path: Path,
    layout: Layout,
    kind: str | None = None,
    num_classes: int | None = None,
    name: Path | None = None,
    fmt: str | None = None,
    fmt_source: str | None = None,
) -> SubmissionFormat:
    """Raise a one-line UserError unless ``path`` is a valid submission for ``layout``'s competition.

    ``kind``: ``classification``, ``verification`` or ``combined`` (None: the combined task for F26, else guessed
    from the header and labels; integer labels mean classification). ``fmt`` names the combined format (see
    ``submission_format``; ``fmt_source`` says where it was named). ``num_classes`` defaults to the number of classes
    in ``train/``. ``name`` is the file name to use in messages (the final name when a temporary file is checked).
    Returns the format checked.
    """
    name = name or path
    frame = read_submission(path, name)
    guessed = kind is None
    kind = kind or _guess_kind(frame, layout)
    if kind in KINDS:
        _refuse_unscored(kind, layout, name, guessed)
    checker = _kind_format(layout, kind, fmt, fmt_source)
    checker.check(frame, layout, name, num_classes)
    return checker


def write_combined(
    path: Path,
    layout: Layout,
    labels: Sequence[int],
    scores: Sequence[float],
    fmt: str | None = None,
    num_classes: int | None = None,
    fmt_source: str | None = None,
) -> SubmissionFormat:
    """The combined (F26) submission from class labels (test images in ``classification_ids`` order) and the test
    pairs' scores, in the format ``submission_format`` decides; checked before it takes its name."""
    chosen = submission_format(layout, fmt, fmt_source)
    images, pairs = len(classification_ids(layout)[0]), test_pair_count(layout)
    if len(labels) != images or len(scores) != pairs:  # predictions from another data folder
        raise UserError(
            f"refusing to write {path}: {len(labels)} class labels and {len(scores)} pair scores for the "
            f"{images} test images and {pairs} test pairs under {layout.root}: predict and verify on this data"
        )
    columns = chosen.columns(layout, labels, scores)
    # object columns: class ids stay integers ("12", not "12.0") beside the pairs' float scores
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})

    def verify(tmp: Path) -> None:
        chosen.check(read_submission(tmp, path), layout, path, num_classes)

    write_csv(path, frame, validate=verify)
    return chosen
