"""Write complete competitions in a term's exact layout, from synthetic faces or any folder-per-identity dataset.

Tests, the demo and users without Kaggle access get a competition that every stage can run on. An answer key for
the test splits is written beside the competition (``answers/``), so that test predictions can be scored too.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..competitions import DEFAULT_TERM, Term, family_of, get_term, numbered_name
from ..errors import UserError
from .faces import random_traits, render_face
from .layout import MARKER, list_classes, list_images

ImageMaker = Callable[[], bytes]  # returns the bytes of a JPEG file


@dataclass
class Source:
    """Identities (in a fixed, shuffled order) and, for each, makers of its images."""

    images: dict[str, list[ImageMaker]]


@dataclass
class Split:
    """Which images of which identities go where; lists of (identity, maker)."""

    train: dict[str, list[ImageMaker]]
    dev: dict[str, list[ImageMaker]]
    test: list[tuple[str, ImageMaker]]
    known: dict[str, ImageMaker]
    unknown_dev: list[tuple[str, ImageMaker]]
    unknown_test: list[tuple[str, ImageMaker]]


def identity_names(count: int, rng: np.random.Generator) -> list[str]:
    """Distinct VGGFace2-style names (``n0xxxxx``), never the no-match label ``n000000``."""
    return [f"n{v:06d}" for v in rng.choice(np.arange(1, 100_000), size=count, replace=False)]


def synthetic_source(identities: int, images_per_identity: int, size: int, seed: int) -> Source:
    """``identities`` synthetic people with ``images_per_identity`` photographs each, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    names = identity_names(identities, rng)
    images = {}
    for i, name in enumerate(names):
        traits = random_traits(np.random.default_rng([seed, i]))

        def maker(traits=traits, i=i, j=0) -> bytes:
            return render_face(traits, np.random.default_rng([seed, i, j]), size)

        images[name] = [lambda j=j, m=maker: m(j=j) for j in range(images_per_identity)]
    return Source(images)


def _jpeg_from_file(path: Path, size: int | None) -> ImageMaker:
    def make() -> bytes:
        with Image.open(path) as img:
            img = img.convert("RGB")  # greyscale, palette, RGBA and CMYK sources all become RGB
            if size:
                img = img.resize((size, size), Image.BILINEAR)
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=95)
            return buffer.getvalue()

    return make


def folder_source(folder: Path, size: int | None, seed: int) -> Source:
    """A folder-per-identity dataset (such as ORL) as a source, identities shuffled by ``seed``."""
    if not folder.is_dir():
        raise UserError(f"--from folder {folder} does not exist: give a folder with one subfolder per identity")
    names = [n for n in list_classes(folder) if list_images(folder / n)]
    if len(names) < 6:
        raise UserError(f"--from folder {folder} has {len(names)} identity folders with images: need at least 6")
    order = np.random.default_rng(seed).permutation(len(names))
    return Source(
        {
            names[i]: [_jpeg_from_file(folder / names[i] / f, size) for f in list_images(folder / names[i])]
            for i in order
        }
    )


def split_source(source: Source, classification_identities: int | None, seed: int) -> Split:
    """Classification gets the first identities (60/20/20 of their images for train/dev/test); verification the rest.

    Of the verification identities, a fifth are never shown in ``known/``: their images must be answered with the
    no-match label. Each known identity has one ``known/`` image; its other images go to unknown_dev and unknown_test.
    """
    rng = np.random.default_rng(seed)
    names = list(source.images)
    n_cls = classification_identities or round(len(names) * 0.75)
    cls_names, ver_names = names[:n_cls], names[n_cls:]
    n_unseen = max(1, len(ver_names) // 5)
    split = Split({}, {}, [], {}, [], [])
    for name in cls_names:
        images = source.images[name]
        n_eval = max(1, round(len(images) * 0.2))
        split.train[name] = images[: len(images) - 2 * n_eval]
        split.dev[name] = images[len(images) - 2 * n_eval : len(images) - n_eval]
        split.test += [(name, m) for m in images[len(images) - n_eval :]]
    for k, name in enumerate(ver_names):
        images = source.images[name]
        unseen = k < n_unseen
        if not unseen:
            split.known[name] = images[0]
            images = images[1:]
        half = len(images) // 2
        split.unknown_dev += [(name, m) for m in images[:half]]
        split.unknown_test += [(name, m) for m in images[half:]]
    # Flat folders must not reveal identities through their order.
    for items in (split.test, split.unknown_dev, split.unknown_test):
        items[:] = [items[i] for i in rng.permutation(len(items))]
    return split


def _write(path: Path, maker: ImageMaker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(maker())


def _write_folders(base: Path, per_identity: dict[str, list[ImageMaker]]) -> None:
    for name, makers in per_identity.items():
        for j, maker in enumerate(makers):
            _write(base / name / f"{j + 1:04d}_01.jpg", maker)


def _write_labelled(base: Path, items: list[tuple[int, ImageMaker]], labels_file: str | None) -> list[str]:
    """An S25-on split: ``images/<split>_<nnnnnn>.jpg`` and (unless None) ``labels.txt`` with
    ``<image_file> <class_id>`` lines, file names relative to ``images/``; returns the file names."""
    names = [f"{base.name}_{i:06d}.jpg" for i in range(len(items))]
    (base / "images").mkdir(parents=True, exist_ok=True)
    for file_name, (_, maker) in zip(names, items, strict=True):
        _write(base / "images" / file_name, maker)
    if labels_file:
        (base / labels_file).write_text("".join(f"{f} {c}\n" for f, (c, _) in zip(names, items, strict=True)))
    return names


def _write_split(base: Path, per_identity: dict[str, list[ImageMaker]], term: Term, classes: list[str]) -> None:
    if term.labels_file:
        index = {name: i for i, name in enumerate(classes)}
        _write_labelled(base, [(index[n], m) for n, makers in per_identity.items() for m in makers], term.labels_file)
    else:
        _write_folders(base, per_identity)


def _write_flat(folder: Path, items: list[tuple[str, ImageMaker]], names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, (_, maker) in zip(names, items, strict=True):
        _write(folder / file_name, maker)


def _truth(split_items: list[tuple[str, ImageMaker]], known: dict, no_match: str | None) -> list[str]:
    return [name if name in known or no_match is None else no_match for name, _ in split_items]


def write_identity_competition(split: Split, out: Path, term: Term, seed: int = 0) -> None:
    """Classification + known/unknown verification, as in F22/S23/F23/S24."""
    ver_dir, answers = out / term.ver_dir, out / "answers"
    _write_classification(split, out, term)
    if term.no_match is None:  # F22: every unknown image shows a known identity
        split.unknown_dev = [item for item in split.unknown_dev if item[0] in split.known]
        split.unknown_test = [item for item in split.unknown_test if item[0] in split.known]

    known = {name: [maker] for name, maker in split.known.items()}
    _write_folders(ver_dir / term.known, known)
    dev_names = [f"{i:06d}.jpg" for i in range(len(split.unknown_dev))]
    test_ver_names = [f"{i:06d}.jpg" for i in range(len(split.unknown_test))]
    _write_flat(ver_dir / term.unknown_dev, split.unknown_dev, dev_names)
    _write_flat(ver_dir / term.unknown_test, split.unknown_test, test_ver_names)
    dev_truth = _truth(split.unknown_dev, split.known, term.no_match)
    pd.DataFrame({"id": dev_names, "label": dev_truth}).to_csv(ver_dir / term.ver_dev_labels, index=False)
    pd.DataFrame({"id": range(len(test_ver_names)), "label": term.no_match}).to_csv(
        ver_dir / term.ver_sample, index=False
    )

    answers.mkdir(parents=True, exist_ok=True)
    test_truth = _truth(split.unknown_test, split.known, term.no_match)
    pd.DataFrame({"id": range(len(test_ver_names)), "label": test_truth}).to_csv(
        answers / "verification_test.csv", index=False
    )


def _write_classification(split: Split, out: Path, term: Term) -> None:
    """Train and dev splits, the flat test folder with its sample submission, and the test answer key."""
    cls_dir = out / term.cls_dir
    classes = sorted(split.train)
    _write_split(cls_dir / term.train, split.train, term, classes)
    _write_split(cls_dir / term.dev, split.dev, term, classes)
    if term.test is None:
        return
    labels = [classes.index(name) for name, _ in split.test]
    if term.labels_file:  # test/images/, with labels.txt as S25, F25 and S26 shipped it (F26 ships none)
        test_labels = term.labels_file if term.test_labels else None
        test_names = _write_labelled(
            cls_dir / term.test, list(zip(labels, [m for _, m in split.test], strict=True)), test_labels
        )
    else:
        test_names = [numbered_name(i, term) for i in range(len(split.test))]
        _write_flat(cls_dir / term.test, split.test, test_names)
    if term.cls_sample:
        pd.DataFrame({"id": test_names, "label": 0}).to_csv(cls_dir / term.cls_sample, index=False)
    (out / "answers").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": test_names, "label": labels}).to_csv(out / "answers" / "classification_test.csv", index=False)


def _pairs(items: list[tuple[str, str]], rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """Every genuine pair (capped) and as many impostor pairs, shuffled."""
    by_identity: dict[str, list[str]] = {}
    for name, path in items:
        by_identity.setdefault(name, []).append(path)
    genuine = [(a, b, 1) for paths in by_identity.values() for i, a in enumerate(paths) for b in paths[i + 1 :]]
    genuine = [genuine[i] for i in rng.permutation(len(genuine))[: max(4, 3 * len(by_identity))]]
    impostor = []
    while len(impostor) < len(genuine):
        (n1, p1), (n2, p2) = (items[i] for i in rng.choice(len(items), 2, replace=False))
        if n1 != n2:
            impostor.append((p1, p2, 0))
    pairs = genuine + impostor
    return [pairs[i] for i in rng.permutation(len(pairs))]


def _opaque_name(counter: int) -> str:
    """An 8-letter name like the real ``ver_data/q6HIqRrx.jpg``, fixed by ``counter``."""
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    rng = np.random.default_rng([7, counter])
    return "".join(letters[i] for i in rng.integers(0, len(letters), 8)) + f"{counter:03d}.jpg"


def write_pairs_competition(split: Split, out: Path, term: Term, seed: int) -> None:
    """Classification data + labelled validation pairs and unlabelled test pairs, as in S22, F24 and S25."""
    base, answers = out / term.ver_dir, out / "answers"
    _write_classification(split, out, term)
    rng = np.random.default_rng(seed)
    pools = {"val": split.unknown_dev, "test": split.unknown_test + [(n, m) for n, m in split.known.items()]}
    files: dict[str, list[tuple[str, str]]] = {}
    counter = 0
    for pool, items in pools.items():
        files[pool] = []
        sub = f"{term.pair_dirs[0 if pool == 'val' else 1]}/" if term.pair_dirs else ""
        for name, maker in items:
            rel = f"{sub}{_opaque_name(counter)}"
            _write(base / term.ver_images / rel, maker)
            # S22's CSVs name paths under the verification folder; S25 on, bare names relative to ver_data/
            files[pool].append((name, f"{term.ver_images}/{rel}" if term.pairs_csv else rel))
            counter += 1
    val = _pairs(files["val"], rng)
    test = _pairs(files["test"], rng)
    if term.pairs_csv:  # S22
        pd.DataFrame(val, columns=["img_path1", "img_path2", "gt"]).to_csv(base / term.val_pairs, index=False)
        pd.DataFrame([t[:2] for t in test], columns=["img_path1", "img_path2"]).to_csv(
            base / term.test_pairs, index=False
        )
    else:
        (base / term.val_pairs).write_text("".join(f"{a} {b} {y}\n" for a, b, y in val))
        (base / term.test_pairs).write_text("".join(f"{a} {b}\n" for a, b, _ in test))
    answers.mkdir(parents=True, exist_ok=True)
    id_col, score_col = term.pair_header
    pd.DataFrame({id_col: range(len(test)), score_col: [y for _, _, y in test]}).to_csv(
        answers / "verification_test_pairs.csv", index=False
    )


# The sample competition of each verifier (``Family.verifier``): known/unknown identities, or pair files.
SAMPLE_WRITERS = {"identity": write_identity_competition, "pairs": write_pairs_competition}


def write_sample_competition(
    out: str | Path,
    term: str = DEFAULT_TERM,
    source_folder: str | Path | None = None,
    identities: int = 30,
    images_per_identity: int = 30,
    size: int | None = None,
    seed: int = 0,
) -> dict:
    """Write a complete competition of ``term`` to ``out`` and return a summary of what was written."""
    out = Path(out)
    try:
        spec = get_term(term)
    except KeyError as e:
        raise UserError(e.args[0]) from None
    if identities < 2 or images_per_identity < 5:
        raise UserError("--identities must be at least 2 and --images-per-identity at least 5")
    if source_folder is not None:
        source = folder_source(Path(source_folder), size, seed)
        split = split_source(source, None, seed)
    else:
        n_ver = max(5, identities // 2)
        source = synthetic_source(identities + n_ver, images_per_identity, size or 112, seed)
        split = split_source(source, identities, seed)
    write_split_competition(out, spec, split, seed)
    return {
        "out": str(out),
        "term": spec.key,
        "classes": len(split.train),
        "train_images": sum(map(len, split.train.values())),
        "dev_images": sum(map(len, split.dev.values())),
        "test_images": len(split.test),
        "known_identities": len(split.known),
        "unknown_dev_images": len(split.unknown_dev),
        "unknown_test_images": len(split.unknown_test),
    }


def write_split_competition(out: Path, spec: Term, split: Split, seed: int) -> None:
    """Write ``split`` as a competition of term ``spec`` at ``out``, laid out as its download unpacks."""
    # Write into a temporary folder and rename, so an interrupted run never leaves a competition that looks whole.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # Terms recognised by structure unpack into one folder (hw2p2_data/, ...): the sample does the same.
    folder = partial if spec.cls_dir else partial / spec.folders[0]
    SAMPLE_WRITERS[family_of(spec).verifier](split, folder, spec, seed)
    if folder != partial:
        (folder / "answers").rename(partial / "answers")
    # The marker a download writes, naming the term: folders that several terms share are told apart by it.
    (partial / MARKER).write_text(json.dumps({"term": spec.key, "sample": True}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
