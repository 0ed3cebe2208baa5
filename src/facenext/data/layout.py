"""Find a competition's folders under a data root by their structure, and read its label files.

A competition is recognised by what its folders hold (``cls_data/train/images`` with ``labels.txt``, identity
folders, ``known/``, the pair files), wherever the download unpacked it and whatever the folder is called. The
term is then told apart by, in order: the term the config or command line names, the ``.complete`` marker that
``facenext download`` and ``sample-data`` write (slug or term), a competition's slug anywhere in the folder's path
(``kaggle competitions download`` + unzip, or Kaggle's ``/kaggle/input/<slug>/``, where no marker of ours exists),
the folder names the term's zip unpacks to, and whether the test split ships a ``labels.txt`` (S26 does, F26 not).
Every competition under the data root is listed; more than one (the demo's sample beside a real download
included) is refused with one line naming them. A term that is named keeps only the competitions that nothing
names as another term. Each term's family (``facenext.competitions``) says what its structure is and builds the
``Layout`` (re-exported here).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ..competitions import TERMS, Layout, Term, family_of, get_term
from ..errors import UserError
from .folders import IMAGES_DIR, LABELS_FILE, MARKER, candidates, chain, read_marker

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


class AmbiguousData(UserError):
    """More than one competition could be meant: the user must name one (never a silent pick)."""


def list_images(folder: Path) -> list[str]:
    """Image file names directly inside ``folder``, sorted as the competitions sort them."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def list_classes(folder: Path) -> list[str]:
    """The class of each index, in order: identity folders (ImageFolder order: sorted names), or class ids.

    A split with a ``labels.txt`` gives integer class ids: index ``k`` is class id ``k``, for every id up to the
    largest one listed (``"0", "1", ..., "8630"``), so that a prediction's index is the id the competition expects.
    """
    folder = Path(folder)
    if (folder / LABELS_FILE).is_file():
        ids = {int(class_id) for _, class_id in read_labels(folder)}
        return [str(i) for i in range(max(ids) + 1)] if ids else []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _lines(path: Path) -> list[str]:
    """The file's lines, a UTF-8 byte order mark (which some editors add) removed from the first."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a UTF-8 text file ({e.reason} at byte {e.start}): re-download it") from None


def label_lines(folder: Path) -> list[tuple[int, str, str]]:
    """``(line number, image path relative to folder, class id)`` for every line of ``folder/labels.txt``, repeats
    included: what ``check-data`` inspects (``read_labels`` gives each image once)."""
    path = Path(folder) / LABELS_FILE
    items = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit() or int(fields[1]) < 0:
            raise UserError(f"{path}, line {number}: expected `<image_file> <class_id>`, got {line.strip()!r}")
        name = fields[0].removeprefix(f"{IMAGES_DIR}/")
        items.append((number, f"{IMAGES_DIR}/{name}", str(int(fields[1]))))
    return items


def read_labels(folder: Path) -> list[tuple[str, str]]:
    """``(image path relative to folder, class id)`` for each line of ``folder/labels.txt``, in file order.

    A line is ``<image_file> <class_id>`` (``train_000000.jpg 4521``): the file name relative to ``images/`` and an
    integer id. A leading ``images/`` in the file name is accepted too. A line repeated exactly is read once;
    ``label_problems`` names the repeats, files listed under two classes and ids outside the term's range.
    """
    return list(dict.fromkeys((rel, class_id) for _, rel, class_id in label_lines(folder)))


class LabelProblem(NamedTuple):
    what: str  # e.g. "labels.txt: 2 repeated lines"
    examples: list[str]
    harmless: bool  # read correctly anyway (a repeated line is read once)


def label_problems(folder: Path, num_classes: int | None) -> list[LabelProblem]:
    """What is wrong in ``folder/labels.txt``: repeated lines, an image listed under two classes, class ids outside
    ``[0, num_classes)`` (the term's classes; None: not checked)."""
    seen: dict[tuple[str, str], int] = {}
    classes_of: dict[str, set[str]] = {}
    repeated, outside = [], []
    for number, rel, class_id in label_lines(folder):
        if (rel, class_id) in seen:
            repeated.append(f"line {number} repeats line {seen[rel, class_id]} ({rel} {class_id})")
        seen.setdefault((rel, class_id), number)
        classes_of.setdefault(rel, set()).add(class_id)
        if num_classes is not None and int(class_id) >= num_classes:
            outside.append(f"line {number} ({rel} {class_id})")
    twice = [f"{rel} ({', '.join(sorted(ids, key=int))})" for rel, ids in classes_of.items() if len(ids) > 1]
    problems = []
    if repeated:
        problems.append(LabelProblem(f"{LABELS_FILE}: {len(repeated)} repeated lines", repeated, True))
    if twice:
        problems.append(LabelProblem(f"{LABELS_FILE}: {len(twice)} images listed under two classes", twice, False))
    if outside:
        what = f"{LABELS_FILE}: {len(outside)} class ids outside 0..{(num_classes or 0) - 1}"
        problems.append(LabelProblem(what, outside, False))
    return problems


def refuse_label_problems(folder: Path, num_classes: int | None) -> None:
    """A one-line UserError naming the first problem of ``folder/labels.txt`` that would train on wrong labels (an
    image under two classes, ids outside the term's range); repeated lines are read once and pass."""
    for problem in label_problems(folder, num_classes):
        if not problem.harmless:
            raise UserError(
                f"{folder}/{problem.what}, e.g. {problem.examples[0]}: fix the file (`facenext check-data` lists all)"
            )


PAIR_SHAPES = {True: "<imgA> <imgB> <0|1>", False: "<imgA> <imgB>"}


def _names_images(fields: list[str]) -> bool:
    return all(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in fields[:2])


def _pair_lines(path: Path, labelled: bool) -> tuple[list[int], list[list[str]]]:
    """The line numbers and fields of a space-separated pair file's pairs. A first line such as ``img1 img2 label``
    (no image names where the next line has them) is a header and skipped; a line with another number of fields is
    refused, naming it."""
    width = 3 if labelled else 2
    numbered = [(n, line.split()) for n, line in enumerate(_lines(path), 1) if line.strip()]
    if len(numbered) > 1 and not _names_images(numbered[0][1]) and _names_images(numbered[1][1]):
        numbered = numbered[1:]
    for number, fields in numbered:
        if len(fields) != width:
            hint = " (a labelled pair file in its place?)" if not labelled and len(fields) == 3 else ""
            raise UserError(
                f"{path}, line {number}: expected `{PAIR_SHAPES[labelled]}`, got {len(fields)} fields "
                f"{' '.join(fields)!r}{hint}: re-download the competition"
            )
    return [n for n, _ in numbered], [fields for _, fields in numbered]


def read_pairs(path: Path, labelled: bool, csv: bool = False) -> pd.DataFrame:
    """Pairs as columns img1, img2 (and label): space-separated lines (F24 on), or S22's CSV with a header.

    Refused in one line: a line with another number of fields, a label other than 0 or 1, a file with no pairs, and
    labelled pairs of one kind only (the EER needs genuine and impostor pairs). A header line is skipped.
    """
    path = Path(path)
    columns = ["img1", "img2", "label"] if labelled else ["img1", "img2"]
    if csv:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise UserError(f"{path} is not a readable CSV file ({str(e).splitlines()[0]})") from None
        if frame.shape[1] < len(columns):
            raise UserError(f"{path}: expected columns like img_path1,img_path2{',gt' if labelled else ''}")
        frame = frame.iloc[:, : len(columns)].set_axis(columns, axis=1)
        if (frame == "").any().any():
            raise UserError(f"{path}: every line must hold {len(columns)} fields")
        lines = list(range(2, len(frame) + 2))  # after the header
        if labelled:  # S22's gt may be written 1.0
            numeric = pd.to_numeric(frame["label"], errors="coerce")
            valid = numeric.isin([0, 1])
            frame.loc[valid, "label"] = numeric[valid].astype(int).astype(str)
    else:
        lines, rows = _pair_lines(path, labelled)
        frame = pd.DataFrame(rows, columns=columns, dtype=str)
    if frame.empty:
        raise UserError(f"{path} lists no pairs: re-download the competition")
    if labelled:
        _check_pair_labels(frame["label"], path, lines)
    return frame


def _check_pair_labels(labels: pd.Series, path: Path, lines: list[int]) -> None:
    """Labels 0 or 1, and both present: the EER compares genuine with impostor pairs."""
    bad = ~labels.isin(["0", "1"])
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise UserError(
            f"{path}, line {lines[row]}: label {labels.iloc[row]!r} is not 0 (impostor) or 1 (genuine): "
            "re-download the competition"
        )
    if labels.nunique() < 2:
        kind = "genuine (1)" if labels.iloc[0] == "1" else "impostor (0)"
        raise UserError(
            f"{path}: all {len(labels)} pairs are {kind}: the EER is undefined without both genuine and impostor "
            "pairs; re-download the competition"
        )


@dataclass(frozen=True)
class Found:
    """A competition found at ``folder``: its term, or the terms it could be when nothing tells them apart."""

    folder: Path
    terms: tuple[Term, ...]

    def describe(self) -> str:
        return f"{'/'.join(t.key for t in self.terms)} at {self.folder}"


def _named_by_slug(folder: Path, terms: list[Term]) -> list[Term]:
    """The terms whose Kaggle slug is a folder in ``folder``'s path, the nearest slug first: a download unzipped into
    ``<slug>/``, or Kaggle's ``/kaggle/input/<slug>/``, names its competition even above the data root."""
    paths = [folder.absolute()]
    with contextlib.suppress(OSError, RuntimeError):
        paths.append(folder.resolve())  # a link named after anything, pointing into <slug>/
    for path in paths:
        for part in reversed(path.parts):
            named = [t for t in terms if part in t.slugs]
            if named:
                return named
    return []


def _by_test_split(folder: Path, terms: list[Term]) -> list[Term]:
    """The terms whose test split is what ``folder``'s is: with a ``labels.txt`` (S26) or without (F26)."""

    def fits(term: Term) -> bool:
        test = folder / term.test if term.test else None
        if term.test_labels is None or test is None or not test.is_dir():
            return True  # no test split to look at: it tells nothing
        return (test / LABELS_FILE).is_file() == term.test_labels

    return [t for t in terms if fits(t)]


def _identify(folder: Path, root: Path, terms: list[Term]) -> tuple[Term, ...]:
    """Narrow the terms whose structure matches ``folder``: by the marker, a slug in its path, the folder names the
    zips unpack to, then the test split."""
    if len(terms) <= 1:
        return tuple(terms)
    marker = read_marker(folder, root)
    by_marker = [t for t in terms if marker.get("term") == t.key or marker.get("slug") in t.slugs]
    if by_marker:
        return tuple(by_marker[:1])
    by_slug = _named_by_slug(folder, terms)
    if by_slug:
        return tuple(by_slug)
    names = {p.name for p in chain(folder, root)}
    by_name = [t for t in terms if names & set(t.folders)] or terms
    return tuple(_by_test_split(folder, by_name) or by_name)


def _terms_of(folder: Path, root: Path) -> tuple[Term, ...]:
    """The terms ``folder`` could be, among every term whose structure it has."""
    return _identify(folder, root, [t for t in TERMS.values() if family_of(t).matches(folder, t)])


def _refuse_named_as_another(folder: Path, root: Path, term: Term) -> None:
    """A competition that its marker or a slug in its path names as another term is not ``term``: most likely the
    other term's competition was downloaded. Only these name a term for sure; the test split does not overrule one
    named by the user."""
    shaped = [t for t in TERMS.values() if family_of(t).matches(folder, t)]
    marker = read_marker(folder, root)
    named = [t for t in shaped if marker.get("term") == t.key or marker.get("slug") in t.slugs]
    named = named or _named_by_slug(folder, shaped)
    if named and term not in named:
        keys = " or ".join(t.key for t in named)
        raise UserError(
            f"{folder} is the {keys.upper()} competition (named by its {'marker' if marker else 'folder'}), not "
            f"{term.key.upper()}: download {term.key.upper()}'s data (`facenext download {term.slugs[0]}`) and point "
            f"data.root at it, or set data.term to {keys}"
        )


def find_competitions(root: Path, terms: list[Term]) -> list[Found]:
    """Every competition of ``terms`` under ``root`` (up to two levels down), by structure."""
    found: list[Found] = []
    for folder in candidates(root):
        matching = [t for t in terms if family_of(t).matches(folder, t)]
        if matching:
            found.append(Found(folder, _identify(folder, root, matching)))
    return found


def _ambiguity(root: Path, found: list[Found]) -> str:
    listed = "; ".join(f.describe() for f in found)
    return (
        f"{len(found)} competitions under {root} ({listed}): set data.root (or --data) to one of these folders, "
        "and data.term (or --term) to its term"
    )


def find_layout(root: str | Path, term: str = "auto") -> Layout:
    """Locate the one competition under ``root``; ``term="auto"`` recognises any known term by its structure."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data folder {root} does not exist: run `make download` (or `facenext sample-data {root}`), "
            "or set data.root=<folder>"
        )
    try:
        wanted = list(TERMS.values()) if term in ("auto", "", None) else [get_term(term)]
    except KeyError as e:
        raise UserError(f"{e.args[0]} (config key data.term)") from None
    found = find_competitions(root, wanted)
    if len(found) > 1 and len(wanted) == 1:  # a competition its marker, path or test split names as another term
        found = [f for f in found if wanted[0] in _terms_of(f.folder, root)] or found  # is not the one named
    if not found:
        expected = "; ".join(f"{t.key}: {family_of(t).describe(t)}" for t in wanted)
        raise UserError(f"no competition found under {root}: expected one of these layouts ({expected})")
    if len(found) > 1:
        raise AmbiguousData(_ambiguity(root, found))
    (one,) = found
    if len(wanted) == 1:
        _refuse_named_as_another(one.folder, root, wanted[0])
    if len(one.terms) > 1:
        keys = ", ".join(t.key for t in one.terms)
        raise AmbiguousData(
            f"{one.folder} holds a competition in a layout that terms {keys} share, and nothing says which (no "
            f"competition slug in its path, no {MARKER} marker): set data.term (or pass --term) to one of {keys}"
        )
    layout = family_of(one.terms[0]).layout(one.folder, one.terms[0], root)
    if layout.is_sample and term not in ("auto", "", None):
        others = [f for f in find_competitions(root, list(TERMS.values())) if f.folder != one.folder]
        if others:  # the demo's sample must never stand in silently for a real download beside it
            raise AmbiguousData(_ambiguity(root, [one, *others]))
    return layout
