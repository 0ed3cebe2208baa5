"""Identity matching: each unknown face gets the known identity of highest cosine similarity, or the term's
no-match label (``n000000``) below a threshold tuned on ``unknown_dev`` (terms without one, F22, never reject).

The gallery is the known photos, one per person in F23, and by default unknown_dev's labelled photos too
(``verify.gallery``): a person known by one photo is matched much better by the mean of several, and the dev photos
of people never known become no-match prototypes (a test photo closest to one of them is answered no-match). Dev is
then scored against the gallery without the photo being scored, so its accuracy and threshold stay honest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import KNOWN_ONLY, WITH_DEV
from ..data.layout import Layout, list_classes, list_images
from ..errors import UserError
from ..io import write_csv, write_npz
from ..submission import verification_ids, write_submission
from .choice import Choice, ScoringSetting, choose
from .embeddings import EmbeddingCache
from .metrics import best_point, genuine_impostor, roc, threshold_sweep
from .plots import plot_threshold_curve, write_score_figures
from .similarity import PLAIN, Scoring

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


def normalised(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def known_sums(cache: EmbeddingCache, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """The sum of each known identity's normalised image embeddings, and the identities."""
    names = list_classes(layout.known)
    paths, owners = [], []
    for i, name in enumerate(names):
        for f in list_images(layout.known / name):
            paths.append(layout.known / name / f)
            owners.append(i)
    feats = cache.get("known", paths)
    sums = np.zeros((len(names), feats.shape[1]), dtype=np.float32)
    np.add.at(sums, np.array(owners), feats)
    return sums, names


def known_gallery(cache: EmbeddingCache, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """One normalised embedding per known identity (the mean of its images' embeddings), and the identities."""
    sums, names = known_sums(cache, layout)
    return normalised(sums), names


@dataclass
class DevGallery:
    """The known gallery joined by unknown_dev's labelled photos."""

    gallery: np.ndarray  # each known identity's normalised mean over its known and dev photos, then no-match prototypes
    labels: list[str]  # the identity each gallery row answers (the no-match label for a prototype)
    dev_similarity: np.ndarray  # dev x gallery, each dev photo scored against the gallery without itself
    dev_photos: int  # dev photos in the gallery (of known people, and as no-match prototypes)
    prototypes: int

    def describe(self) -> str:
        return f"{PLAIN}, the gallery joined by {self.dev_photos} labelled dev photos ({self.prototypes} of no-match)"


def with_dev_photos(
    sums: np.ndarray, names: list[str], dev: np.ndarray, truth: np.ndarray, no_match: str | None
) -> DevGallery:
    """Add the labelled dev photos (``dev``, normalised, labelled ``truth``) to the known sums (``known_sums``).

    A dev photo of a known person joins that person's mean; one labelled ``no_match`` becomes a prototype of its own.
    Dev's similarities leave the scored photo out: against its own person's mean without it, and -1 (the lowest
    cosine) against itself as a prototype."""
    column = {name: i for i, name in enumerate(names)}
    owner = np.array([column.get(t, -1) for t in truth])
    known = np.flatnonzero(owner >= 0)
    joined = sums.copy()
    np.add.at(joined, owner[known], dev[known])
    gallery = normalised(joined)
    similarity = dev @ gallery.T
    without_itself = normalised(joined[owner[known]] - dev[known])
    similarity[known, owner[known]] = np.einsum("ij,ij->i", dev[known], without_itself)
    labels = list(names)
    strangers = np.flatnonzero(truth == no_match) if no_match is not None else np.array([], dtype=int)
    if len(strangers):
        to_strangers = dev @ dev[strangers].T
        to_strangers[strangers, np.arange(len(strangers))] = NO_THRESHOLD
        similarity = np.concatenate([similarity, to_strangers], axis=1)
        gallery = np.concatenate([gallery, dev[strangers]])
        labels += [no_match] * len(strangers)
    return DevGallery(gallery, labels, similarity, len(known) + len(strangers), len(strangers))


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
    identities = [i for i, name in enumerate(names) if name != layout.term.no_match]  # not no-match prototypes
    genuine, impostor = genuine_and_impostor(similarity[:, identities], truth, [names[i] for i in identities])
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


def refuse_fixed_refinement(setting: ScoringSetting) -> None:
    """Expansion and re-ranking refine similarities to the known photos alone, which leave-one-out dev scoring of a
    gallery holding the dev photos cannot follow: a number asked for with that gallery is refused, not ignored."""
    if setting.base() != Scoring():
        raise UserError(
            f"--expand {setting.expand} --rerank {setting.rerank} refine the scores against the known photos alone, "
            f"and the gallery holds unknown_dev's photos too (verify.gallery {WITH_DEV}): add --gallery {KNOWN_ONLY}, "
            "or give auto or 0"
        )


def verify_identities(
    cache: EmbeddingCache, layout: Layout, out: Path, setting: ScoringSetting, gallery_kind: str = WITH_DEV
) -> tuple[dict[str, Any], Choice]:
    """Evaluate on ``unknown_dev`` (when labelled) and write the ``unknown_test`` submission (when present), each
    split scored against the gallery (``gallery_kind``: the known photos, or with the labelled dev photos) as
    ``setting`` says or dev chooses. The scores are saved for ensembles."""
    if layout.known is None or layout.unknown_dev is None:
        raise UserError(f"no verification data (known/, unknown_dev/) found under {layout.root}")
    sums, names = known_sums(cache, layout)
    gallery, labels = normalised(sums), names
    summary: dict[str, Any] = {"known_identities": len(names), "gallery": KNOWN_ONLY}
    threshold, choice = NO_THRESHOLD, Choice(setting.base(), None, reason="no labelled dev: nothing to choose on")
    saved = IdentityScores(names, choice.scoring.describe())
    if layout.ver_dev_labels is not None:
        files = list_images(layout.unknown_dev)
        saved.dev_truth, saved.dev_files = dev_truth(layout, files), np.array(files)
        queries = cache.get("unknown_dev", [layout.unknown_dev / f for f in files])
        no_match = layout.term.no_match
        if gallery_kind == WITH_DEV:
            refuse_fixed_refinement(setting)
            joined = with_dev_photos(sums, names, queries, saved.dev_truth, no_match)
            gallery, labels, saved.dev = joined.gallery, joined.labels, joined.dev_similarity
            reason = "the labelled dev photos joined the gallery: plain cosine"
            choice = Choice(Scoring(), None, reason=reason, used=joined.describe())
            summary.update(
                gallery=WITH_DEV, gallery_dev_photos=joined.dev_photos, no_match_prototypes=joined.prototypes
            )
            logger.info(f"identity matching: {choice.describe()}")
        else:

            def outcome_of(scoring: Scoring) -> IdentityOutcome:
                return IdentityOutcome(match_similarity(gallery, queries, scoring), saved.dev_truth, names, no_match)

            choice = choose(setting, outcome_of, "dev accuracy")
            saved.dev = choice.outcome.similarity
        saved.names, saved.scoring = labels, choice.describe()
        dev, threshold = evaluate_similarity(saved.dev, saved.dev_truth, labels, layout, out)
        summary.update(dev)
    if layout.unknown_test is not None:
        ids, files = verification_ids(layout)
        saved.test_ids, saved.test_files = np.array(ids), np.array(files)
        saved.test = split_similarity(cache, gallery, "unknown_test", layout.unknown_test, files, choice.scoring)
        path = out / "verification_submission.csv"
        summary.update(write_identity_submission(path, layout, ids, saved.test, labels, threshold))
    saved.save(out)
    return summary, choice
