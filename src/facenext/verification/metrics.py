"""Verification metrics on scores (pure numpy and scikit-learn: the tests and the benchmark call these directly).

One threshold sweep serves both families: a pair is right when accepted if it is genuine and right when rejected if
it is an impostor; an identity match is right when accepted if the identity is the true one and right when rejected
if the image has no known identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FARS = (1e-3, 1e-2)


def threshold_sweep(
    scores: np.ndarray, right_if_accepted: np.ndarray, right_if_rejected: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of accepting ``score >= t`` for every distinct decision, thresholds ascending.

    Candidates are midpoints between sorted distinct scores plus both extremes; O(n log n), no n x n matrix. They
    are computed in float64: between two neighbouring float32 scores (crowded after query expansion) the float32
    midpoint rounds onto one of them, repeating a threshold and putting the decision on the wrong side of a score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    accepted_right = np.asarray(right_if_accepted, dtype=bool)[order]
    rejected_right = np.asarray(right_if_rejected, dtype=bool)[order]
    values, first = np.unique(s, return_index=True)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    # a threshold just below values[k] rejects everything before index first[k]; the last rejects all
    rejected = np.append(first, len(s))
    right_among_rejected = np.concatenate([[0], np.cumsum(rejected_right)])[rejected]
    lost_among_rejected = np.concatenate([[0], np.cumsum(accepted_right)])[rejected]
    return candidates, (right_among_rejected + accepted_right.sum() - lost_among_rejected) / len(s)


def best_point(thresholds: np.ndarray, accuracy: np.ndarray) -> tuple[float, float]:
    """The threshold of highest accuracy (the lowest one on ties) and that accuracy."""
    best = int(accuracy.argmax())
    return float(thresholds[best]), float(accuracy[best])


def accuracy_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of ``score >= t`` against boolean ``labels`` (genuine pairs) for every distinct decision."""
    genuine = np.asarray(labels).astype(bool)
    return threshold_sweep(scores, genuine, ~genuine)


def best_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return best_point(*accuracy_curve(scores, labels))


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: int = 10, seed: int = 0) -> tuple[float, float]:
    """LFW-style accuracy: the threshold is chosen on 9 folds and scored on the 10th; mean and std over folds."""
    index = np.random.default_rng(seed).permutation(len(scores))
    accuracies = []
    for held in np.array_split(index, folds):
        train = np.ones(len(scores), dtype=bool)
        train[held] = False
        threshold, _ = best_accuracy_threshold(scores[train], labels[train])
        accuracies.append(float(((scores[held] >= threshold) == labels[held].astype(bool)).mean()))
    return float(np.mean(accuracies)), float(np.std(accuracies))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """True-accept rate at the lowest threshold whose false-accept rate is at most ``far``."""
    allowed = fpr <= far + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """EER where the false-reject rate crosses the false-accept rate, interpolated linearly; and its threshold."""
    fnr = 1 - tpr
    diff = fnr - fpr  # decreasing along the ROC (thresholds descending)
    i = int(np.argmax(diff <= 0))  # first point where false accepts reach false rejects
    if i == 0:
        return float(fpr[0]), float(thresholds[0])
    w = diff[i - 1] / (diff[i - 1] - diff[i])  # fraction of the way from point i-1 to i
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    t_prev = min(thresholds[i - 1], thresholds[i] + 1.0) if np.isinf(thresholds[i - 1]) else thresholds[i - 1]
    return float(eer), float(t_prev + w * (thresholds[i] - t_prev))


@dataclass(frozen=True)
class Roc:
    """The ROC curve of scored pairs (thresholds descending, every distinct score), its EER and AUC."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    eer: float
    eer_threshold: float
    auc: float


def roc(scores: np.ndarray, labels: np.ndarray) -> Roc:
    """ROC, EER (and its threshold) and AUC of ``scores`` against 0/1 ``labels`` (1: genuine)."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    eer, eer_threshold = equal_error_rate(fpr, tpr, thresholds)
    return Roc(fpr, tpr, thresholds, eer, eer_threshold, float(roc_auc_score(labels, scores)))


def genuine_impostor(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels of genuine and impostor scores taken together."""
    labels = np.concatenate([np.ones(len(genuine), int), np.zeros(len(impostor), int)])
    return np.concatenate([genuine, impostor]), labels


def pair_metrics(scores: np.ndarray, labels: np.ndarray, folds: int = 10) -> dict[str, float]:
    """EER and its threshold, ROC AUC, TAR at FAR 1e-3 / 1e-2, best accuracy and its threshold, k-fold accuracy."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    curve = roc(scores, labels)
    threshold, accuracy = best_accuracy_threshold(scores, labels)
    metrics = {"eer": curve.eer, "eer_threshold": curve.eer_threshold, "auc": curve.auc}
    metrics.update({f"tar_at_far_{far:g}": tar_at_far(curve.fpr, curve.tpr, far) for far in FARS})
    metrics.update(best_accuracy=accuracy, best_threshold=threshold)
    if len(scores) >= folds:
        mean, std = kfold_accuracy(scores, labels, folds)
        metrics.update({f"{folds}fold_accuracy": mean, f"{folds}fold_accuracy_std": std})
    return metrics
