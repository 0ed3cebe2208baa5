"""The three families of HW2P2 competitions, each one object that knows its layout, score and submission.

Each term names its family in ``terms.yaml`` (``facenext terms`` lists them); the examples below are not a registry.

- ``IdentityMatching`` (e.g. F23): classification on identity folders plus known/unknown verification,
  both scored by accuracy, one Kaggle competition per task.
- ``PairScoring`` (e.g. S26): classification data for training, verification of image pairs scored
  by EER (S22: ROC AUC); the submission is one similarity score per test pair.
- ``Combined`` (F26): the pair-scoring layout, and one competition for both tasks scored
  ``0.5 x classification accuracy + 0.5 x (1 - EER)``; its submission carries both parts.

Each family's ``dev_score`` is the number the term's leaderboard ranks (higher is better), computed on the dev data;
training keeps ``best.pt`` by it.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..data.layout import IMAGES_DIR, LABELS_FILE, Layout, optional, read_marker, sample_submissions
from .terms import Term


def combined_score(accuracy: float, eer: float) -> float:
    """F26's leaderboard score: ``0.5 x classification accuracy + 0.5 x (1 - EER)`` (fractions, higher is better)."""
    return 0.5 * accuracy + 0.5 * (1.0 - eer)


class Family:
    name = ""

    # --- layout ------------------------------------------------------------------------------------------------
    def matches(self, folder: Path, term: Term) -> bool:
        """True when ``folder`` holds a competition with ``term``'s structure."""
        if term.cls_dir:  # older terms: the zip's folder names are part of the structure
            return folder.name == term.cls_dir and (folder / term.train).is_dir()
        train = folder / term.train
        if not train.is_dir():
            return False
        labelled = (train / LABELS_FILE).is_file()
        return (labelled and (train / IMAGES_DIR).is_dir()) if term.labels_file else not labelled

    def describe(self, term: Term) -> str:
        if term.labels_file:
            return f"{term.train}/{IMAGES_DIR} + {term.train}/{LABELS_FILE}"
        return f"{term.cls_dir or '.'}/{term.train}"

    def layout(self, folder: Path, term: Term, root: Path) -> Layout:
        marker = read_marker(folder, root)
        test_dir = optional(folder, term.test)
        test = test_dir
        if test_dir is not None and (test_dir / IMAGES_DIR).is_dir():
            test = test_dir / IMAGES_DIR
        return Layout(
            term=term,
            root=folder,
            train=folder / term.train,
            dev=optional(folder, term.dev),
            test=test,
            cls_sample=optional(folder, term.cls_sample),
            test_labels=optional(test_dir, LABELS_FILE) if test_dir is not None else None,
            samples=sample_submissions(folder, term.slugs),
            is_sample=bool(marker.get("sample")),
            **self.verification_parts(folder, term, root),
        )

    def verification_parts(self, folder: Path, term: Term, root: Path) -> dict[str, Path | None]:
        raise NotImplementedError

    # --- score -------------------------------------------------------------------------------------------------
    score_name = "dev_acc"

    def dev_score(self, dev_acc: float, eer: float | None = None, auc: float | None = None) -> float:
        """The leaderboard's number on dev data, higher is better."""
        return dev_acc

    def uses_pairs(self) -> bool:
        return False

    def submission_parts(self, term: Term) -> tuple[str, ...]:
        """What ``ensemble`` submits: class labels (``classification``) and/or pair scores (``pairs``)."""
        return ("classification",)

    def write_sample(self, split, out: Path, term: Term, seed: int) -> None:
        """Write a sample competition of ``term`` from ``split`` into ``out``, as its download unpacks."""
        from ..data.sample import write_identity_competition

        write_identity_competition(split, out, term, seed)


def _near(folder: Path, root: Path, name: str, marker: str) -> Path | None:
    """The folder ``name`` holding ``marker`` nearest to ``folder``: a sibling first, else anywhere below root."""
    from ..data.layout import _candidates

    sibling = folder.parent / name
    if (sibling / marker).exists():
        return sibling
    for candidate in _candidates(root):
        if candidate.name == name and (candidate / marker).exists():
            return candidate
    return None


class IdentityMatching(Family):
    name = "identity"

    def verification_parts(self, folder: Path, term: Term, root: Path) -> dict[str, Path | None]:
        base = _near(folder, root, term.ver_dir, term.known)
        return dict(
            known=optional(base, term.known),
            unknown_dev=optional(base, term.unknown_dev),
            unknown_test=optional(base, term.unknown_test),
            ver_dev_labels=optional(base, term.ver_dev_labels),
            ver_sample=optional(base, term.ver_sample),
        )


class PairScoring(Family):
    name = "pairs"

    @property
    def score_name(self) -> str:  # type: ignore[override]
        return "dev_1-eer"  # ranked by the EER, lower is better: the score is 1 - EER, higher is better

    def uses_pairs(self) -> bool:
        return True

    def verification_parts(self, folder: Path, term: Term, root: Path) -> dict[str, Path | None]:
        if term.cls_dir:  # S22: the verification folder beside the classification one
            base = _near(folder, root, term.ver_dir, term.val_pairs)
            places = [base] if base is not None else []
        else:  # the pair files lie at the competition root or under cls_data/ (both seen for F26)
            places = [folder, folder / Path(term.train).parent]
        val = next((p / term.val_pairs for p in places if (p / term.val_pairs).is_file()), None)
        test = next((p / term.test_pairs for p in places if (p / term.test_pairs).is_file()), None)
        images = next((p / term.ver_images for p in [*places, folder] if (p / term.ver_images).is_dir()), None)
        return dict(ver_images=images, val_pairs=val, test_pairs=test)

    def submission_parts(self, term: Term) -> tuple[str, ...]:
        # S22 had a classification competition beside the pair one; F24 to S26 rank the pairs alone
        return ("classification",) if len(term.slugs) > 1 else ("pairs",)

    def dev_score(self, dev_acc: float, eer: float | None = None, auc: float | None = None) -> float:
        return float(1.0 - eer if eer is not None else math.nan)

    def write_sample(self, split, out: Path, term: Term, seed: int) -> None:
        from ..data.sample import write_pairs_competition

        write_pairs_competition(split, out, term, seed)


class AucPairScoring(PairScoring):
    @property
    def score_name(self) -> str:  # type: ignore[override]
        return "dev_auc"

    def dev_score(self, dev_acc: float, eer: float | None = None, auc: float | None = None) -> float:
        return float(auc) if auc is not None else super().dev_score(dev_acc, eer)  # 1 - EER where no AUC is given


class Combined(PairScoring):
    name = "combined"

    @property
    def score_name(self) -> str:  # type: ignore[override]
        return "dev_combined"

    def submission_parts(self, term: Term) -> tuple[str, ...]:
        return ("classification", "pairs")

    def dev_score(self, dev_acc: float, eer: float | None = None, auc: float | None = None) -> float:
        return combined_score(dev_acc, eer if eer is not None else math.nan)


FAMILIES: dict[str, Family] = {"identity": IdentityMatching(), "pairs": PairScoring(), "combined": Combined()}
_AUC = AucPairScoring()


def family_of(term: Term) -> Family:
    if term.family == "pairs" and term.ver_metric == "auc":
        return _AUC
    return FAMILIES[term.family]


def pair_image_base(layout: Layout, first_name: str) -> Path:
    """The folder that names in the pair files are relative to: ``ver_data/`` (S25 on: bare names), else the folder
    of the pair file (names such as ``ver_data/x.jpg``, S22's ``verification/dev/x.jpg``), else the competition."""
    pairs = layout.val_pairs or layout.test_pairs
    for base in (layout.ver_images, pairs.parent if pairs else None, layout.root):
        if base is not None and (base / first_name).is_file():
            return base
    return layout.ver_images or (pairs.parent if pairs else layout.root)
