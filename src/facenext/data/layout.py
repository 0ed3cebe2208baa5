"""Find a competition's folders under a data root and check that they hold what the term promises."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..competitions import TERMS, Term, get_term
from ..errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}
LABELS_FILE = "labels.txt"  # S25 style splits: images/<file> listed with their identity, one `path identity` a line


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one competition's parts; a part the term does not have is None."""

    term: Term
    root: Path
    train: Path
    dev: Path | None
    test: Path | None
    cls_sample: Path | None
    known: Path | None = None
    unknown_dev: Path | None = None
    unknown_test: Path | None = None
    ver_dev_labels: Path | None = None
    ver_sample: Path | None = None
    ver_images: Path | None = None
    val_pairs: Path | None = None
    test_pairs: Path | None = None


def list_images(folder: Path) -> list[str]:
    """Image file names directly inside ``folder``, sorted as the competitions sort them."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def list_classes(folder: Path) -> list[str]:
    """Identity folders in ImageFolder order (sorted names): the class index of each identity.

    A split with a ``labels.txt`` gives its identities from that file instead, sorted the same way, except that
    identities which are all integers sort by value (so that label ``k`` gets index ``k`` when they run 0..N-1).
    """
    folder = Path(folder)
    if (folder / LABELS_FILE).is_file():
        names = {identity for _, identity in read_labels(folder)}
        if all(n.isdigit() for n in names):
            return sorted(names, key=lambda n: (int(n), n))
        return sorted(names)
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_labels(folder: Path) -> list[tuple[str, str]]:
    """``(image path relative to folder, identity)`` for each line of ``folder/labels.txt``, in file order."""
    path = Path(folder) / LABELS_FILE
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise UserError(f"{path}, line {number}: expected `images/<file> <identity>`, got {line.strip()!r}")
        items.append((fields[0], fields[1]))
    return items


def _candidates(root: Path) -> Iterator[Path]:
    """The root, its subfolders and theirs, breadth first: a competition is found wherever a download unpacked it."""
    yield root
    level = [root]
    for _ in range(2):
        level = [child for parent in level for child in _subdirs(parent)]
        yield from level


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _find_part(root: Path, folder: str, marker: str) -> Path | None:
    for candidate in _candidates(root):
        base = candidate if not folder or candidate.name == folder else None
        if base is not None and (base / marker).exists():
            return base
    return None


def _optional(base: Path | None, rel: str | None) -> Path | None:
    if base is None or rel is None:
        return None
    path = base / rel
    return path if path.exists() else None


def _locate(root: Path, term: Term) -> Layout | None:
    marker = f"{term.train}/{term.labels_file}" if term.labels_file else term.train
    cls_base = _find_part(root, term.cls_dir, marker)
    if cls_base is None:
        return None
    if term.verification == "identity":
        ver_base = _find_part(root, term.ver_dir, term.known)
        ver = dict(
            known=_optional(ver_base, term.known),
            unknown_dev=_optional(ver_base, term.unknown_dev),
            unknown_test=_optional(ver_base, term.unknown_test),
            ver_dev_labels=_optional(ver_base, term.ver_dev_labels),
            ver_sample=_optional(ver_base, term.ver_sample),
        )
    else:
        ver_base = _find_part(root, term.ver_dir, term.val_pairs)
        ver = dict(
            ver_images=_optional(ver_base, term.ver_images),
            val_pairs=_optional(ver_base, term.val_pairs),
            test_pairs=_optional(ver_base, term.test_pairs),
        )
    return Layout(
        term=term,
        root=root,
        train=cls_base / term.train,
        dev=_optional(cls_base, term.dev),
        test=_optional(cls_base, term.test),
        cls_sample=_optional(cls_base, term.cls_sample),
        **ver,
    )


def find_layout(root: str | Path, term: str = "auto") -> Layout:
    """Locate the competition under ``root``; ``term="auto"`` tries every known term's layout."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"data folder {root} does not exist: run `make download` (or `facenext sample-data {root}`), "
            "or set data.root=<folder>"
        )
    try:
        terms = list(TERMS.values()) if term == "auto" else [get_term(term)]
    except KeyError as e:
        raise UserError(f"{e.args[0]} (config key data.term)") from None
    for candidate in terms:
        layout = _locate(root, candidate)
        if layout is not None:
            return layout
    wanted = "; ".join(f"{t.key}: {t.cls_dir or '.'}/{t.train}" for t in terms)
    raise UserError(f"no competition found under {root}: expected one of these layouts ({wanted})")
