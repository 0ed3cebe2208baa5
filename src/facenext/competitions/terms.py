"""Every supported HW2P2 term as data: slugs, the folders its download unpacks to, classes, limits and metric.

The terms live in ``terms.yaml`` beside this module (facts and their confidence from
``shared/spec/competitions.md``); a user adds their own (the next term) from a YAML file of the same shape
(``add_terms_file``: ``data.terms_file``, ``--terms`` or ``$FACENEXT_TERMS``), without a new release. A term belongs
to one family (``facenext.competitions.families``), which knows how that kind of competition is laid out, scored and
submitted; a new term of a known family is one entry. Paths are relative to the competition's own folder, which is
found anywhere up to two levels below the data root (see ``facenext.data.layout``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import coerce_value
from ..errors import UserError


@dataclass(frozen=True)
class Term:
    key: str
    title: str
    slugs: tuple[str, ...]
    num_classes: int
    param_limit: int | None  # every model behind a submission together (ensembles included)
    family: str  # "identity", "pairs" or "combined" (see families.FAMILIES)
    ver_metric: str  # accuracy, auc or eer
    folders: tuple[str, ...] = ()  # folder names the download unpacks to: they identify the term of a found layout
    # Whether the classification test split ships a labels.txt (S25, F25, S26 yes; F26 no; None: not a clue). It tells
    # apart terms that unpack to the same folder (S26 and F26: hw2p2_data/) when neither a slug nor a marker does.
    test_labels: bool | None = None
    eer_in_percent: bool = False  # the leaderboard shows the EER in percent (S26: 3.37 means 0.0337)
    # The course's grading back-end reads the W&B run from a description "<tag>|WB=<entity>/<project>/<run_id>"
    # (facenext.grading); None: the term is not known to grade that way.
    grading_tag: str | None = None
    submission_format: str | None = None  # default format name; None: the sample submission or the user decides
    id_digits: int = 6  # zero padding of classification test ids (000000.jpg)
    cls_dir: str = ""  # classification folder (relative to the data root, searched up to two levels down)
    ver_dir: str = ""  # verification folder, likewise
    train: str = "train"
    dev: str = "dev"
    labels_file: str | None = None  # S25 on: split/images/* listed in split/labels.txt as `<file> <class_id>`
    test: str | None = "test"
    cls_sample: str | None = "classification_sample_submission.csv"
    # identity matching
    known: str = "known"
    unknown_dev: str = "unknown_dev"
    unknown_test: str = "unknown_test"
    ver_dev_labels: str = "verification_dev.csv"
    ver_sample: str | None = "verification_sample_submission.csv"
    no_match: str | None = "n000000"  # label of an unknown image that matches no known identity
    # pair scoring
    ver_images: str = "ver_data"
    val_pairs: str = "val_pairs.txt"
    test_pairs: str = "test_pairs.txt"
    pair_header: tuple[str, str] = ("ID", "Label")
    pairs_csv: bool = False  # S22: CSV with a header (img_path1,img_path2,gt) instead of space-separated lines
    pair_dirs: tuple[str, str] | None = None  # S22: dev and test pair images in their own folders under ver_images

    @property
    def metric(self) -> str:
        """What the leaderboard ranks: ``accuracy``, ``auc``, ``eer`` or ``combined``."""
        return "combined" if self.family == "combined" else self.ver_metric

    @property
    def lower_is_better(self) -> bool:
        """The leaderboard ranks an EER, lower first; accuracy, AUC and the combined score higher first."""
        return self.metric == "eer"


# What a term's ``family`` and ``ver_metric`` may be (``families.FAMILIES`` holds the family objects).
FAMILY_NAMES = ("identity", "pairs", "combined")
VER_METRICS = ("accuracy", "auc", "eer")
SHIPPED = "facenext"  # where the terms of the package's own terms.yaml come from, as ``facenext terms`` shows it
TERMS_ENV = "FACENEXT_TERMS"  # user terms files, separated by os.pathsep
LIKE = "like"  # in a user's term: start from this known term's fields
_KEY = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _checked(key: str, fields: dict[str, Any], where: str) -> Term:
    """A Term from a file's fields: each value of its field's type, family and metric known, numbers positive."""
    hints = typing.get_type_hints(Term)
    values = {}
    for name, value in fields.items():
        try:
            values[name] = coerce_value(value, hints[name], f"{key}.{name}")
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    missing = [f.name for f in dataclasses.fields(Term) if f.name != "key" and f.default is dataclasses.MISSING]
    missing = [name for name in missing if name not in values]
    if missing:
        raise UserError(f"{where}: term {key} lacks {', '.join(missing)} (or start from a known term: {LIKE}: s26)")
    term = Term(key=key, **values)
    if term.family not in FAMILY_NAMES:
        raise UserError(f"{where}: key {key}.family is {term.family!r}: choose one of {', '.join(FAMILY_NAMES)}")
    if term.ver_metric not in VER_METRICS:
        raise UserError(f"{where}: key {key}.ver_metric is {term.ver_metric!r}: choose one of {', '.join(VER_METRICS)}")
    for name in ("num_classes", "param_limit", "id_digits"):
        if getattr(term, name) is not None and getattr(term, name) <= 0:
            raise UserError(f"{where}: key {key}.{name} must be positive, got {getattr(term, name)}")
    if not term.slugs:
        raise UserError(f"{where}: key {key}.slugs is empty: list the term's Kaggle competition slug(s)")
    return term


def _entry_fields(key: str, entry: Any, where: str, known: dict[str, Term]) -> dict[str, Any]:
    """An entry's fields, starting from the fields of the term it is ``like`` (that term's slugs are no folder names
    of the new term: its own slugs are, unless it lists its ``folders``)."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: term {key} must be a mapping of fields, got {entry!r}")
    names = [f.name for f in dataclasses.fields(Term) if f.name != "key"]
    unknown = sorted(set(entry) - {*names, LIKE})
    if unknown:
        raise UserError(f"{where}: unknown key {key}.{unknown[0]}: valid keys are {LIKE}, {', '.join(names)}")
    if LIKE not in entry:
        return dict(entry)
    base = known.get(str(entry[LIKE]).lower())
    if base is None:
        raise UserError(f"{where}: key {key}.{LIKE}: unknown term {entry[LIKE]!r}: choose one of {', '.join(known)}")
    fields = {name: getattr(base, name) for name in names}
    fields.update({name: value for name, value in entry.items() if name != LIKE})
    if "folders" not in entry:
        slugs = tuple(fields["slugs"]) if isinstance(fields["slugs"], (list, tuple)) else ()
        fields["folders"] = (*(f for f in base.folders if f not in base.slugs), *slugs)
    return fields


def parse_terms(text: str, where: str, known: dict[str, Term]) -> dict[str, Term]:
    """The terms a YAML text defines (``where`` names it in errors); ``like`` may name ``known`` or earlier terms."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where} must map term keys to their fields (e.g. s27: {{{LIKE}: s26, slugs: [...]}})")
    terms: dict[str, Term] = {}
    for raw_key, entry in data.items():
        key = str(raw_key)
        if not _KEY.fullmatch(key):
            raise UserError(f"{where}: term key {key!r} must be lower-case letters, digits, - or _ (e.g. s27)")
        terms[key] = _checked(key, _entry_fields(key, entry, where, {**known, **terms}), where)
    return terms


def _shipped_terms() -> dict[str, Term]:
    text = resources.files(__package__).joinpath("terms.yaml").read_text(encoding="utf-8")
    return parse_terms(text, "facenext/competitions/terms.yaml", {})


TERMS: dict[str, Term] = _shipped_terms()
# Where each term of TERMS came from: SHIPPED or the user's terms file.
_SOURCES: dict[str, str] = dict.fromkeys(TERMS, SHIPPED)

DEFAULT_TERM = "f23"


def get_term(key: str) -> Term:
    try:
        return TERMS[key.lower()]
    except KeyError:
        raise KeyError(
            f"unknown term {key!r}: choose one of {', '.join(TERMS)} (a term of your own: data.terms_file or --terms)"
        ) from None


def term_source(key: str) -> str:
    """Where a known term came from: ``facenext`` (the package's terms.yaml) or the user's terms file."""
    return _SOURCES[key]


def add_terms_file(path: str | Path) -> list[Term]:
    """Add the terms of a user's YAML file to ``TERMS`` (for this process) and return them. A file read before is not
    read again; a key or slug that another term already has is refused, shipped terms included: a corrected term
    takes a new key (``s26b: {like: s26, ...}``)."""
    path = Path(path)
    where = f"terms file {path}"
    source = str(path.resolve())
    if source in _SOURCES.values():
        return [t for k, t in TERMS.items() if _SOURCES[k] == source]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(
            f"{where} cannot be read ({e.strerror}): check data.terms_file, --terms or ${TERMS_ENV}"
        ) from None
    terms = parse_terms(text, where, TERMS)
    for term in terms.values():
        if term.key in TERMS:
            owner = "shipped with facenext" if _SOURCES[term.key] == SHIPPED else f"in {_SOURCES[term.key]}"
            raise UserError(f"{where}: term {term.key} is already {owner}: give yours another key, e.g. {term.key}b")
        clash = next(((t, s) for t in TERMS.values() for s in term.slugs if s in t.slugs), None)
        if clash:
            raise UserError(f"{where}: key {term.key}.slugs: {clash[1]} is already term {clash[0].key}'s slug")
    TERMS.update(terms)
    _SOURCES.update(dict.fromkeys(terms, source))
    return list(terms.values())


def add_terms_from_env() -> None:
    """Add the terms files that ``$FACENEXT_TERMS`` names (several separated by ``os.pathsep``)."""
    for path in filter(None, os.environ.get(TERMS_ENV, "").split(os.pathsep)):
        add_terms_file(path)


@contextlib.contextmanager
def restored_terms() -> Iterator[None]:
    """Terms added inside the block are gone after it (one command's terms do not outlive the command)."""
    before, sources = dict(TERMS), dict(_SOURCES)
    try:
        yield
    finally:
        TERMS.clear()
        TERMS.update(before)
        _SOURCES.clear()
        _SOURCES.update(sources)


def describe_terms() -> list[str]:
    """A table of the known terms: key, title, family, slugs, classes, limit, score and where each came from."""
    rows = [("key", "title", "family", "classes", "limit", "score", "slugs", "from")]
    for t in TERMS.values():
        limit = f"{t.param_limit / 1e6:g}M" if t.param_limit else "none"
        score = f"{t.metric} ({'lower' if t.lower_is_better else 'higher'} is better)"
        rows.append((t.key, t.title, t.family, str(t.num_classes), limit, score, ", ".join(t.slugs), _SOURCES[t.key]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in rows
    ]


def term_of_slug(slug: str) -> Term | None:
    """The term whose competition (or late-submission twin) has this Kaggle slug."""
    return next((t for t in TERMS.values() if slug in t.slugs), None)


def numbered_name(index: int, term: Term) -> str:
    """The file name of the ``index``-th classification test image, as the competition names it."""
    return f"{index:0{term.id_digits}d}.jpg"
