"""Identity matching: each unknown face gets the known identity of highest cosine similarity, or the term's
no-match label (``n000000``) below a threshold tuned on ``unknown_dev`` (terms without one, F22, never reject).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.layout import Layout, list_classes, list_images
from ..errors import UserError
from ..io import write_csv, write_npz
from ..submission import verification_ids, write_submission
from .choice import Choice, ScoringSetting, choose
from .embeddings import EmbeddingCache
from .metrics import best_point, genuine_impostor, roc, threshold_sweep
from .plots import plot_threshold_curve, write_score_figures
from .similarity import Scoring

logger = logging.getLogger(__name__)

NO_THRESHOLD = -1.0  # the lowest cosine similarity: accept every match


@dataclass
class IdentityScores:
    """A run's unknown x known similarities on dev (with the true labels) and test (with the submission ids), and
    how they were scored: everything an ensemble needs (``facenext ensemble --verification``)."""

    names: list[str]
    scoring: str
    dev: np.ndarray | None = None
    dev_truth: np.ndarray | None = None
    test: np.ndarray | None = None
    test_ids: np.ndarray | None = None
    dev_files: np.ndarray | None = None  # the images behind the rows, so that runs of other downloads are refused
    test_files: np.ndarray | None = None

    FILE = "identity_scores.npz"
    OPTIONAL = ("dev", "dev_truth", "test", "test_ids", "dev_files", "test_files")

    def save(self, folder: Path) -> None:
        arrays = {"names": np.array(self.names), "scoring": np.array(self.scoring)}
        for key in self.OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                arrays[key] = value.astype(np.float32) if key in ("dev", "test") else value.astype(str)
        write_npz(folder / self.FILE, arrays)

    @classmethod
    def load(cls, folder: Path) -> IdentityScores | None:
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            found = {k: data[k] for k in data.files}
        fields = {k: found.get(k) for k in cls.OPTIONAL}
        return cls(found["names"].tolist(), str(found["scoring"]), **fields)


def known_gallery(cache: EmbeddingCache, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """One normalised embedding per known identity (the mean of its images' embeddings), and the identities."""
    names = list_classes(layout.known)
    paths, owners = [], []
    for i, name in enumerate(names):
        for f in list_images(layout.known / name):
            paths.append(layout.known / name / f)
            owners.append(i)
    feats = cache.get("known", paths)
    gallery = np.zeros((len(names), feats.shape[1]), dtype=np.float32)
    np.add.at(gallery, np.array(owners), feats)
    return gallery / np.linalg.norm(gallery, axis=1, keepdims=True), names


def best_matches(similarity: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Best-matching known identity and its similarity for each row of an unknown x known similarity matrix."""
    best = similarity.argmax(1)
    return np.array(names)[best], similarity[np.arange(len(best)), best]


def threshold_curve(
    similarity: np.ndarray, predicted: np.ndarray, truth: np.ndarray, no_match: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Identity-matching accuracy for every distinct threshold (below it: ``no_match``), thresholds ascending."""
    rejected_right = truth == no_match if no_match is not None else np.zeros(len(truth), dtype=bool)
    return threshold_sweep(similarity, predicted == truth, rejected_right)


def best_threshold(
    similarity: np.ndarray, predicted: np.ndarray, truth: np.ndarray, no_match: str | None
) -> tuple[float, float]:
    """The threshold (below it: ``no_match``) with the best accuracy on labelled images, and that accuracy."""
    return best_point(*threshold_curve(similarity, predicted, truth, no_match))


def tuned_accuracy(similarity: np.ndarray, truth: np.ndarray, names: list[str], no_match: str | None) -> float:
    """The identity-matching accuracy of an unknown x known similarity matrix at its best threshold."""
    predicted, best_similarity = best_matches(similarity, names)
    return best_threshold(best_similarity, predicted, truth, no_match)[1]


@dataclass
class IdentityOutcome:
    """Dev unknown x known similarities of one scoring candidate (``verification.choice``); its score is the accuracy
    at the best threshold of whichever subset of dev images it is asked about."""

    similarity: np.ndarray
    truth: np.ndarray
    names: list[str]
    no_match: str | None

    def __post_init__(self) -> None:
        self.predicted, self.best = best_matches(self.similarity, self.names)

    @property
    def items(self) -> int:
        return len(self.truth)

    def score(self, index: np.ndarray) -> float:
        return best_threshold(self.best[index], self.predicted[index], self.truth[index], self.no_match)[1]


def genuine_and_impostor(similarity: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Genuine scores (each image against its true known identity) and impostor ones (against every other)."""
    column = {name: i for i, name in enumerate(names)}
    owner = np.array([column.get(t, -1) for t in truth])
    is_genuine = np.zeros_like(similarity, dtype=bool)
    has = owner >= 0
    is_genuine[np.flatnonzero(has), owner[has]] = True
    return similarity[is_genuine], similarity[~is_genuine]


def match_similarity(gallery: np.ndarray, queries: np.ndarray, scoring: Scoring) -> np.ndarray:
    """Unknown x known similarity, the gallery and the queries refined together (``scoring``)."""
    both = np.concatenate([gallery, queries])
    return scoring.block(both, np.arange(len(gallery), len(both)), np.arange(len(gallery)))


def split_similarity(
    cache: EmbeddingCache, gallery: np.ndarray, split: str, folder: Path, files: list[str], scoring: Scoring
) -> np.ndarray:
    """Unknown x known similarity of a split's images (``files`` in ``folder``, embeddings cached as ``split``)."""
    return match_similarity(gallery, cache.get(split, [folder / f for f in files]), scoring)


def evaluate_similarity(
    similarity: np.ndarray, truth: np.ndarray, names: list[str], layout: Layout, figures: Path | None
) -> tuple[dict[str, Any], float]:
    """Dev accuracy at the threshold tuned on dev (and without one), the pair EER of the image-to-identity scores,
    and, into ``figures`` when given, the threshold curve and score figures: the summary entries and the threshold."""
    predicted, best_similarity = best_matches(similarity, names)
    thresholds, accuracy = threshold_curve(best_similarity, predicted, truth, layout.term.no_match)
    threshold, dev_accuracy = best_point(thresholds, accuracy)
    summary: dict[str, Any] = dict(
        dev_accuracy=dev_accuracy,
        dev_accuracy_no_threshold=float((predicted == truth).mean()),
        threshold=threshold,
        dev_images=len(truth),
    )
    genuine, impostor = genuine_and_impostor(similarity, truth, names)
    if len(genuine) and len(impostor):
        pairs = roc(*genuine_impostor(genuine, impostor))
        summary.update(dev_pair_eer=pairs.eer, dev_pair_auc=pairs.auc)
    if figures is not None:
        curve_csv, curve_png = figures / "threshold_curve.csv", figures / "threshold_curve.png"
        # a plain CSV, not a submission: the submission writer's checks (unique ids) do not apply to a curve
        write_csv(curve_csv, pd.DataFrame({"threshold": thresholds, "accuracy": accuracy}))
        plot_threshold_curve(curve_png, thresholds, accuracy, threshold)
        summary.update(threshold_curve_csv=str(curve_csv), threshold_curve_png=str(curve_png))
        summary.update(write_score_figures(figures, genuine, impostor, layout.term.key))
    logger.info(
        f"verification dev accuracy {dev_accuracy:.4f} at threshold {threshold:.3f} "
        f"({summary['dev_accuracy_no_threshold']:.4f} without threshold, {len(truth)} images)"
    )
    return summary, threshold


def dev_truth(layout: Layout, files: list[str]) -> np.ndarray:
    """The labels of ``unknown_dev``'s images (sorted file order, as the term's label file lists them)."""
    truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"].to_numpy()
    if len(truth) != len(files):
        raise UserError(f"{layout.ver_dev_labels} has {len(truth)} labels for {len(files)} unknown_dev images")
    return truth


def identity_labels(similarity: np.ndarray, names: list[str], threshold: float, no_match: str | None) -> np.ndarray:
    """Each row's best known identity, or ``no_match`` where its best similarity is below ``threshold`` (terms
    without a no-match label always answer the best identity)."""
    predicted, best_similarity = best_matches(similarity, names)
    return np.where(best_similarity >= threshold, predicted, no_match) if no_match else predicted


def write_identity_submission(
    path: Path, layout: Layout, ids: list[str], similarity: np.ndarray, names: list[str], threshold: float
) -> dict[str, Any]:
    """The test submission at ``path``: each ``unknown_test`` image's best identity, or no match below
    ``threshold``."""
    labels = identity_labels(similarity, names, threshold, layout.term.no_match)
    write_submission(path, {"id": ids, "label": labels}, layout=layout, kind="verification")
    logger.info(f"wrote {path} ({len(ids)} rows)")
    return {"submission": str(path)}


def verify_identities(
    cache: EmbeddingCache, layout: Layout, out: Path, setting: ScoringSetting
) -> tuple[dict[str, Any], Choice]:
    """Evaluate on ``unknown_dev`` (when labelled) and write the ``unknown_test`` submission (when present), each
    split scored against the gallery as ``setting`` says or dev chooses. The scores are saved for ensembles."""
    if layout.known is None or layout.unknown_dev is None:
        raise UserError(f"no verification data (known/, unknown_dev/) found under {layout.root}")
    gallery, names = known_gallery(cache, layout)
    summary: dict[str, Any] = {"known_identities": len(names)}
    threshold, choice = NO_THRESHOLD, Choice(setting.base(), None, reason="no labelled dev: nothing to choose on")
    saved = IdentityScores(names, choice.scoring.describe())
    if layout.ver_dev_labels is not None:
        files = list_images(layout.unknown_dev)
        saved.dev_truth, saved.dev_files = dev_truth(layout, files), np.array(files)
        queries = cache.get("unknown_dev", [layout.unknown_dev / f for f in files])
        no_match = layout.term.no_match

        def outcome_of(scoring: Scoring) -> IdentityOutcome:
            return IdentityOutcome(match_similarity(gallery, queries, scoring), saved.dev_truth, names, no_match)

        choice = choose(setting, outcome_of, "dev accuracy")
        saved.dev, saved.scoring = choice.outcome.similarity, choice.scoring.describe()
        dev, threshold = evaluate_similarity(saved.dev, saved.dev_truth, names, layout, out)
        summary.update(dev)
    if layout.unknown_test is not None:
        ids, files = verification_ids(layout)
        saved.test_ids, saved.test_files = np.array(ids), np.array(files)
        saved.test = split_similarity(cache, gallery, "unknown_test", layout.unknown_test, files, choice.scoring)
        path = out / "verification_submission.csv"
        summary.update(write_identity_submission(path, layout, ids, saved.test, names, threshold))
    saved.save(out)
    return summary, choice
