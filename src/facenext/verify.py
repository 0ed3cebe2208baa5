"""Face verification from embeddings: known/unknown identity matching, or pair scoring, by cosine similarity.

Embeddings are L2-normalised (flip TTA by default) and cached per run in ``<out>/embeddings_<split>.npz``, keyed by
a fingerprint of the weights file and the TTA, so a second ``verify`` embeds nothing. Dev metrics, the
accuracy-vs-threshold curve (identity matching), the ROC curve and the genuine/impostor histograms are written next
to the submission.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from .combined import save_pair_scores, write_run_submission
from .competitions.families import pair_image_base
from .data.layout import Layout, find_layout, list_classes, list_images, read_pairs
from .engine.checkpoint import atomic_write, write_json
from .errors import UserError
from .inference import LoadedRun, embed, load_run
from .submission import match_ids, write_submission

PAIR_CHUNK = 8192  # pairs scored per step: extra memory is 2 x CHUNK x embedding size, whatever the number of pairs
FARS = (1e-3, 1e-2)

# ---------------------------------------------------------------------------------------------------------------
# Embeddings, cached per run
# ---------------------------------------------------------------------------------------------------------------


def weights_fingerprint(run: LoadedRun, weights: str, tta: str) -> str:
    """Identifies the embeddings a run gives: its weights file (name, mtime, size), TTA and image size."""
    path = run.path / ("last.pt" if weights == "ema" else f"{weights}.pt")
    stat = path.stat()
    return json.dumps(
        {
            "weights": weights,
            "file": path.name,
            "mtime_ns": stat.st_mtime_ns,
            "size": stat.st_size,
            "tta": tta,
            "image_size": run.config.data.image_size,
        },
        sort_keys=True,
    )


class EmbeddingCache:
    """Embeds each distinct image once and keeps the vectors in ``<out>/embeddings_<split>.npz``.

    A cache file is reused only when its fingerprint matches; images it lacks are embedded and added. ``embedded``
    counts the images actually run through the model, across all splits.
    """

    def __init__(self, run: LoadedRun, tta: str, out: Path, fingerprint: str, use_cache: bool = True) -> None:
        self.run, self.tta, self.out, self.fingerprint, self.use_cache = run, tta, out, fingerprint, use_cache
        self.embedded = 0

    def path(self, split: str) -> Path:
        return self.out / f"embeddings_{split}.npz"

    def _load(self, path: Path) -> dict[str, np.ndarray]:
        if not self.use_cache or not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["fingerprint"]) != self.fingerprint:
                    return {}
                return dict(zip(data["paths"].tolist(), data["vectors"].astype(np.float32), strict=True))
        except (OSError, KeyError, ValueError):
            return {}  # unreadable or foreign cache: recompute

    def get(self, split: str, paths: list[Path]) -> np.ndarray:
        """Normalised embeddings of ``paths`` (one row each, in order)."""
        path = self.path(split)
        keys = [str(p) for p in paths]
        cached = self._load(path)
        missing = sorted(set(keys) - set(cached))
        if missing:
            feats = embed(self.run, [Path(k) for k in missing], self.tta)
            cached.update(zip(missing, feats, strict=True))
            self.embedded += len(missing)
            names = sorted(cached)
            vectors = np.stack([cached[k] for k in names]).astype(np.float32)

            def save(tmp: Path) -> None:
                with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                    np.savez(f, paths=np.array(names), vectors=vectors, fingerprint=np.array(self.fingerprint))

            atomic_write(path, save)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cached[k] for k in keys]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Scores and metrics (pure numpy: the tests and the benchmark call these directly)
# ---------------------------------------------------------------------------------------------------------------


def score_pairs(feats: np.ndarray, first: np.ndarray, second: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Cosine score of each pair (rows ``first[i]``, ``second[i]`` of normalised ``feats``), a chunk at a time."""
    scores = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), chunk):
        a = np.take(feats, first[start : start + chunk], axis=0)
        b = np.take(feats, second[start : start + chunk], axis=0)
        scores[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return scores


def accuracy_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of ``score >= t`` against boolean ``labels`` for every distinct decision, thresholds ascending.

    Candidates are midpoints between sorted distinct scores plus both extremes; O(n log n), no n x n matrix.
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    values, first = np.unique(s, return_index=True)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    # a threshold just below values[k] rejects everything before index first[k]; the last rejects all
    rejected = np.append(first, len(s))
    neg_below = np.concatenate([[0], np.cumsum(~y)])[rejected]
    pos_below = np.concatenate([[0], np.cumsum(y)])[rejected]
    correct = neg_below + (y.sum() - pos_below)
    return candidates, correct / len(s)


def best_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    candidates, accuracy = accuracy_curve(scores, labels)
    best = int(accuracy.argmax())
    return float(candidates[best]), float(accuracy[best])


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


def eer_and_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """EER and ROC AUC alone: the per-epoch dev score of pair terms during training (``facenext.scoring``)."""
    labels = np.asarray(labels).astype(int)
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    return equal_error_rate(fpr, tpr, thresholds)[0], float(roc_auc_score(labels, scores))


def pair_metrics(scores: np.ndarray, labels: np.ndarray, folds: int = 10) -> dict[str, float]:
    """EER and its threshold, ROC AUC, TAR at FAR 1e-3 / 1e-2, best accuracy and its threshold, k-fold accuracy."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    eer, eer_threshold = equal_error_rate(fpr, tpr, thresholds)
    threshold, accuracy = best_accuracy_threshold(scores, labels)
    metrics = {"eer": eer, "eer_threshold": eer_threshold, "auc": float(roc_auc_score(labels, scores))}
    metrics.update({f"tar_at_far_{far:g}": tar_at_far(fpr, tpr, far) for far in FARS})
    metrics.update(best_accuracy=accuracy, best_threshold=threshold)
    if len(scores) >= folds:
        mean, std = kfold_accuracy(scores, labels, folds)
        metrics.update({f"{folds}fold_accuracy": mean, f"{folds}fold_accuracy_std": std})
    return metrics


def threshold_curve(
    similarity: np.ndarray, predicted: np.ndarray, truth: np.ndarray, no_match: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Identity-matching accuracy for every distinct threshold (below it: ``no_match``), thresholds ascending."""
    order = np.argsort(similarity, kind="stable")
    s = similarity[order]
    right = (predicted == truth)[order]
    unmatched = (truth == no_match)[order] if no_match is not None else np.zeros(len(s), dtype=bool)
    values, first = np.unique(s, return_index=True)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    rejected = np.append(first, len(s))
    correct_rejected = np.concatenate([[0], np.cumsum(unmatched)])[rejected]
    right_rejected = np.concatenate([[0], np.cumsum(right)])[rejected]
    return candidates, (correct_rejected + right.sum() - right_rejected) / len(s)


def best_threshold(
    similarity: np.ndarray, predicted: np.ndarray, truth: np.ndarray, no_match: str | None
) -> tuple[float, float]:
    """The threshold (below it: ``no_match``) with the best accuracy on labelled images, and that accuracy."""
    candidates, accuracy = threshold_curve(similarity, predicted, truth, no_match)
    best = int(accuracy.argmax())
    return float(candidates[best]), float(accuracy[best])


def match_identities(unknown: np.ndarray, known: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Best-matching known identity and its cosine similarity for each unknown embedding."""
    similarity = unknown @ known.T
    best = similarity.argmax(1)
    return np.array(names)[best], similarity[np.arange(len(best)), best]


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def _save_figure(path: Path, figure: Any) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def plot_roc(path: Path, genuine: np.ndarray, impostor: np.ndarray, title: str) -> None:
    """ROC curve (log FAR axis) with the EER point marked."""
    from matplotlib.figure import Figure  # the object API draws with Agg, never a display

    labels = np.concatenate([np.ones(len(genuine), int), np.zeros(len(impostor), int)])
    fpr, tpr, thresholds = roc_curve(labels, np.concatenate([genuine, impostor]))
    eer, _ = equal_error_rate(fpr, tpr, thresholds)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    floor = 0.5 / max(len(impostor), 1)
    ax.plot(np.maximum(fpr, floor), tpr, label=f"AUC {roc_auc_score(labels, np.concatenate([genuine, impostor])):.4f}")
    ax.plot([eer], [1 - eer], "o", label=f"EER {eer:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save_figure(path, fig)


def plot_histograms(path: Path, genuine: np.ndarray, impostor: np.ndarray, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 81)
    ax.hist(impostor, bins=bins, density=True, alpha=0.6, label=f"impostor ({len(impostor)})")
    ax.hist(genuine, bins=bins, density=True, alpha=0.6, label=f"genuine ({len(genuine)})")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    _save_figure(path, fig)


def plot_threshold_curve(path: Path, thresholds: np.ndarray, accuracy: np.ndarray, best: float) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(thresholds, accuracy)
    ax.axvline(best, color="gray", linestyle="--", label=f"tuned {best:.3f}")
    ax.set_xlabel("threshold (below: no match)")
    ax.set_ylabel("dev accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(path, fig)


def _write_figures(out: Path, genuine: np.ndarray, impostor: np.ndarray, name: str) -> dict[str, str]:
    if len(genuine) == 0 or len(impostor) == 0:
        return {}
    roc, hist = out / "verification_roc.png", out / "verification_scores.png"
    plot_roc(roc, genuine, impostor, f"ROC, {name} dev")
    plot_histograms(hist, genuine, impostor, f"genuine / impostor scores, {name} dev")
    return {"roc_png": str(roc), "scores_png": str(hist)}


# ---------------------------------------------------------------------------------------------------------------
# The two families
# ---------------------------------------------------------------------------------------------------------------


def _known_gallery(cache: EmbeddingCache, layout: Layout) -> tuple[np.ndarray, list[str]]:
    """One normalised embedding per known identity (the mean of its images' embeddings)."""
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


def verify_identities(cache: EmbeddingCache, layout: Layout, out: Path) -> dict[str, Any]:
    term = layout.term
    if layout.known is None or layout.unknown_dev is None:
        raise UserError(f"no verification data (known/, unknown_dev/) found under {layout.root}")
    gallery, names = _known_gallery(cache, layout)
    summary: dict[str, Any] = {"known_identities": len(names)}
    threshold = -1.0
    dev_files = list_images(layout.unknown_dev)
    if layout.ver_dev_labels is not None:
        truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"].to_numpy()
        if len(truth) != len(dev_files):
            raise UserError(f"{layout.ver_dev_labels} has {len(truth)} labels for {len(dev_files)} unknown_dev images")
        feats = cache.get("unknown_dev", [layout.unknown_dev / f for f in dev_files])
        similarity = feats @ gallery.T
        best = similarity.argmax(1)
        predicted, best_sim = np.array(names)[best], similarity[np.arange(len(best)), best]
        thresholds, accuracy = threshold_curve(best_sim, predicted, truth, term.no_match)
        pick = int(accuracy.argmax())
        threshold = float(thresholds[pick])
        curve = out / "threshold_curve.csv"
        write_submission(curve, {"threshold": thresholds, "accuracy": accuracy})
        plot_threshold_curve(out / "threshold_curve.png", thresholds, accuracy, threshold)
        # genuine: each dev image against its true known identity; impostor: against every other identity
        column = {name: i for i, name in enumerate(names)}
        owner = np.array([column.get(t, -1) for t in truth])
        is_genuine = np.zeros_like(similarity, dtype=bool)
        has = owner >= 0
        is_genuine[np.flatnonzero(has), owner[has]] = True
        genuine, impostor = similarity[is_genuine], similarity[~is_genuine]
        summary.update(
            dev_accuracy=float(accuracy[pick]),
            dev_accuracy_no_threshold=float((predicted == truth).mean()),
            threshold=threshold,
            dev_images=len(truth),
            threshold_curve_csv=str(curve),
            threshold_curve_png=str(out / "threshold_curve.png"),
        )
        if len(genuine) and len(impostor):
            scores = np.concatenate([genuine, impostor])
            labels = np.concatenate([np.ones(len(genuine), int), np.zeros(len(impostor), int)])
            fpr, tpr, ts = roc_curve(labels, scores)
            eer, _ = equal_error_rate(fpr, tpr, ts)
            summary.update(dev_pair_eer=eer, dev_pair_auc=float(roc_auc_score(labels, scores)))
        summary.update(_write_figures(out, genuine, impostor, term.key))
        print(
            f"verification dev accuracy {accuracy[pick]:.4f} at threshold {threshold:.3f} "
            f"({summary['dev_accuracy_no_threshold']:.4f} without threshold, {len(truth)} images)"
        )
    if layout.unknown_test is not None:
        files = list_images(layout.unknown_test)
        ids = pd.read_csv(layout.ver_sample, dtype=str)["id"].tolist() if layout.ver_sample else files
        ordered = match_ids(ids, files, layout.ver_sample or layout.unknown_test)
        predicted, similarity = match_identities(
            cache.get("unknown_test", [layout.unknown_test / f for f in ordered]), gallery, names
        )
        labels = np.where(similarity >= threshold, predicted, term.no_match) if term.no_match else predicted
        path = out / "verification_submission.csv"
        write_submission(path, {"id": ids, "label": labels}, layout=layout, kind="verification")
        summary["submission"] = str(path)
        print(f"wrote {path} ({len(ids)} rows)")
    return summary


def pair_scores(cache: EmbeddingCache, split: str, base: Path, pairs: pd.DataFrame) -> np.ndarray:
    """Cosine score of each pair; each distinct image is embedded once (and cached)."""
    codes, unique = pd.factorize(pd.concat([pairs["img1"], pairs["img2"]], ignore_index=True))
    first, second = codes[: len(pairs)], codes[len(pairs) :]
    feats = cache.get(split, [base / name for name in unique])
    return score_pairs(feats, first, second)


def verify_pairs(cache: EmbeddingCache, layout: Layout, out: Path) -> dict[str, Any]:
    if layout.val_pairs is None:
        raise UserError(f"no verification pairs ({layout.term.val_pairs}) found under {layout.root}")
    summary: dict[str, Any] = {}
    val = read_pairs(layout.val_pairs, labelled=True, csv=layout.term.pairs_csv)
    scores = val_scores = pair_scores(cache, "dev", pair_image_base(layout, val["img1"].iloc[0]), val)
    labels = val["label"].astype(int).to_numpy()
    metrics = pair_metrics(scores, labels)
    summary.update({f"dev_{k}": v for k, v in metrics.items()}, dev_pairs=len(val))
    summary.update(_write_figures(out, scores[labels == 1], scores[labels == 0], layout.term.key))
    folds = f" 10-fold accuracy {metrics['10fold_accuracy']:.4f}" if "10fold_accuracy" in metrics else ""
    print(
        f"verification dev EER {metrics['eer']:.4f} (threshold {metrics['eer_threshold']:.3f}), "
        f"AUC {metrics['auc']:.4f}, TAR@FAR1e-3 {metrics['tar_at_far_0.001']:.4f}, "
        f"best accuracy {metrics['best_accuracy']:.4f}{folds} ({len(val)} pairs)"
    )
    test_scores = None
    if layout.test_pairs is not None:
        test = read_pairs(layout.test_pairs, labelled=False, csv=layout.term.pairs_csv)
        test_scores = pair_scores(cache, "test", pair_image_base(layout, test["img1"].iloc[0]), test)
        if layout.family.name != "combined":  # F26's file carries both parts (written below, in verify)
            path = out / "verification_submission.csv"
            id_col, score_col = layout.term.pair_header
            columns = {id_col: range(len(test)), score_col: test_scores}
            write_submission(path, columns, layout=layout, kind="verification")
            summary["submission"] = str(path)
            print(f"wrote {path} ({len(test)} rows)")
    save_pair_scores(out, val_scores, labels, test_scores)
    return summary


def verify(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    tta: str | None = None,
    weights: str = "best",
    data_root: str | None = None,
    cache: bool = True,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Score the dev verification set and write the test submission, for whichever family the term uses.

    ``cache=False`` recomputes every embedding (and refreshes the cache files). For the combined task (F26) the
    pair scores are saved and, once ``predict`` has saved the test logits in the same folder, the submission with
    both parts is written in the format ``fmt`` (default: the sample submission or predict.submission_format).
    """
    run = load_run(run_dir, weights)
    tta = tta or run.config.verify.tta
    out = Path(out_dir) if out_dir else Path("submissions") / run.name
    layout = find_layout(data_root or run.config.data.root, run.config.data.term)
    embeddings = EmbeddingCache(run, tta, out, weights_fingerprint(run, weights, tta), use_cache=cache)
    family = verify_identities if layout.term.verification == "identity" else verify_pairs
    result = family(embeddings, layout, out)
    if layout.family.name == "combined":
        combined = write_run_submission(
            out, layout, fmt or run.config.predict.submission_format, len(run.classes), run.path
        )
        if combined is not None:
            result["submission"] = str(combined)
    summary = {"run": str(run.path), "term": layout.term.key, "tta": tta, **result}
    summary["embedded_images"] = embeddings.embedded
    write_json(out / "verify.json", summary)
    return summary
