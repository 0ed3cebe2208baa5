"""The three families of HW2P2 competitions, each one object that knows its layout, score and submission.

Each term names its family in ``terms.yaml`` (``facenext terms`` lists them); the examples below are not a registry.

- ``IdentityMatching`` (e.g. F23): classification on identity folders plus known/unknown verification,
  both scored by accuracy, one Kaggle competition per task.
- ``PairScoring`` (e.g. S26): classification data for training, verification of image pairs scored
  by EER (S22: ROC AUC); the submission is one similarity score per test pair.
- ``Combined`` (F26): the pair-scoring layout, and one competition for both tasks scored
  ``0.5 x classification accuracy + 0.5 x (1 - EER)``; its submission carries both parts.

Everything that depends on the kind of competition is asked of its family (``layout.family`` or ``family_of(term)``);
no module outside ``facenext.competitions`` names a family or a term (tests/test_house_rules.py checks it):

- where its files lie (``matches``, ``describe``, ``layout``: the ``Layout`` a found competition gets);
- its dev score (``dev_score``, ``score_name``; ``dev_uses_pairs``: training scores the val pairs every epoch), the
  number the term's leaderboard ranks (higher is better), by which training keeps ``best.pt``;
- which verifier runs and which file it writes (``verifier``: ``identity`` or ``pairs``; ``verify``,
  ``ensemble --verification`` and ``sample-data`` each keep one function per verifier);
- what ``check-data`` checks beyond the splits (``data_checks``);
- which submission files its competitions score and how each is told apart (``scored_kinds``, ``one_file``,
  ``kind_of_columns``, ``kind_of_slug``), what ``ensemble`` writes and so combines (``ensemble_kind``), and which
  slugs hold distinct data (``distinct_competitions``: what a Kaggle notebook attaches).

Imports flow one way: ``facenext.data.layout`` (finding a competition) imports this package, which builds layouts from
``facenext.data.folders`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..data.folders import IMAGES_DIR, LABELS_FILE, candidates, optional, read_marker, sample_submissions
from .terms import Term

# The submission files a competition may score (``check-submission --kind``): class labels of the test images, the
# verification file (identities matched, or pair scores), or both tasks in one file (F26).
CLASSIFICATION, VERIFICATION, COMBINED = "classification", "verification", "combined"
KINDS = (CLASSIFICATION, VERIFICATION, COMBINED)


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one competition's parts; a part the term does not have is None."""

    term: Term
    root: Path
    train: Path
    dev: Path | None
    test: Path | None  # the flat folder of classification test images
    cls_sample: Path | None
    known: Path | None = None
    unknown_dev: Path | None = None
    unknown_test: Path | None = None
    ver_dev_labels: Path | None = None
    ver_sample: Path | None = None
    ver_images: Path | None = None
    val_pairs: Path | None = None
    test_pairs: Path | None = None
    test_labels: Path | None = None  # S25 shipped test/labels.txt; F26 does not
    samples: tuple[Path, ...] = ()  # every *sample_submission*.csv in the competition folder
    is_sample: bool = False  # written by `facenext sample-data`

    @property
    def family(self) -> Family:
        """The object that decides everything that depends on the kind of competition."""
        return family_of(self.term)


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
    dev_uses_pairs = False  # the dev score needs the val pairs' EER (or AUC): training scores them every epoch

    def dev_score(self, dev_acc: float, eer: float | None = None, auc: float | None = None) -> float:
        """The leaderboard's number on dev data, higher is better."""
        return dev_acc

    # --- verification and data ---------------------------------------------------------------------------------
    # Which verifier runs (``verify``, ``ensemble --verification``, the sample data written) and the format of the
    # file it writes: ``identity`` (unknown images matched to known identities) or ``pairs`` (a score per image pair).
    verifier = "identity"
    # What ``check-data`` checks beyond the splits: ``pairs`` (the pair files and every image they name, ver_data/),
    # ``test`` (the classification test split, which the submission needs).
    data_checks: tuple[str, ...] = ()

    # --- submissions -------------------------------------------------------------------------------------------
    one_file = False  # one competition scores both tasks in one file (F26): the sample submission decides its format

    def scored_kinds(self, term: Term) -> tuple[str, ...]:
        """The submission files the term's competitions score (``KINDS``)."""
        return (CLASSIFICATION, VERIFICATION)  # one competition per task

    def ensemble_kind(self, term: Term) -> str:
        """The file ``facenext ensemble`` writes from the runs' test logits and/or pair scores (``ensemble
        --verification`` writes the verification file of a term that scores one)."""
        return CLASSIFICATION

    def kind_of_columns(self, columns: list[str], term: Term) -> str | None:
        """The kind of a submission file that these columns tell (None: guess it from its values)."""
        return None

    def kind_of_slug(self, term: Term, slug: str) -> str | None:
        """The file the competition ``slug`` scores, for a term with one competition per task (None: not told)."""
        if len(term.slugs) == 2 and slug in term.slugs:
            return CLASSIFICATION if slug == term.slugs[0] else VERIFICATION
        return None

    def distinct_competitions(self, term: Term) -> tuple[str, ...]:
        """The term's slugs whose data differ (a Kaggle notebook attaches each): two slugs are two competitions."""
        return term.slugs


def _near(folder: Path, root: Path, name: str, marker: str) -> Path | None:
    """The folder ``name`` holding ``marker`` nearest to ``folder``: a sibling first, else anywhere below root."""
    sibling = folder.parent / name
    if (sibling / marker).exists():
        return sibling
    for candidate in candidates(root):
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

    dev_uses_pairs = True
    verifier = "pairs"
    data_checks = ("pairs",)

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

    def scored_kinds(self, term: Term) -> tuple[str, ...]:
        # S22 had a classification competition beside the pair one; F24 to S26 rank the pairs alone
        return (CLASSIFICATION, VERIFICATION) if len(term.slugs) > 1 else (VERIFICATION,)

    def ensemble_kind(self, term: Term) -> str:
        return CLASSIFICATION if len(term.slugs) > 1 else VERIFICATION

    def kind_of_columns(self, columns: list[str], term: Term) -> str | None:
        return VERIFICATION if list(columns) == list(term.pair_header) else None

    def dev_score(self, dev_acc: float, eer: float | None = None, auc: float | None = None) -> float:
        return float(1.0 - eer if eer is not None else math.nan)


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

    data_checks = ("pairs", "test")
    one_file = True

    def scored_kinds(self, term: Term) -> tuple[str, ...]:
        return (COMBINED,)

    def ensemble_kind(self, term: Term) -> str:
        return COMBINED

    def kind_of_columns(self, columns: list[str], term: Term) -> str | None:
        return COMBINED

    def kind_of_slug(self, term: Term, slug: str) -> str | None:
        return None  # the second slug is the late-submission twin of the same competition

    def distinct_competitions(self, term: Term) -> tuple[str, ...]:
        return term.slugs[:1]  # attaching the twin too would put two copies of the same data under /kaggle/input

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
