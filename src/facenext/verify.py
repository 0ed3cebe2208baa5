"""Face verification from embeddings: known/unknown identity matching, or pair scoring, by cosine similarity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from .data.layout import Layout, find_layout, list_classes, list_images
from .engine.checkpoint import write_json
from .errors import UserError
from .inference import LoadedRun, embed, load_run
from .submission import match_ids, write_submission


def best_threshold(
    similarity: np.ndarray, predicted: np.ndarray, truth: np.ndarray, no_match: str
) -> tuple[float, float]:
    """The threshold (below it: ``no_match``) with the best accuracy on labelled images, and that accuracy.

    Candidates are midpoints between the sorted similarities, plus both extremes, so every distinct decision is tried.
    """
    values = np.unique(similarity)
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    accept = similarity[None, :] >= candidates[:, None]
    correct = np.where(accept, predicted[None, :] == truth[None, :], (truth == no_match)[None, :])
    accuracy = correct.mean(1)
    best = int(accuracy.argmax())
    return float(candidates[best]), float(accuracy[best])


def match_identities(unknown: np.ndarray, known: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Best-matching known identity and its cosine similarity for each unknown embedding."""
    similarity = unknown @ known.T
    best = similarity.argmax(1)
    return np.array(names)[best], similarity[np.arange(len(best)), best]


def _known_gallery(run: LoadedRun, layout: Layout, tta: str) -> tuple[np.ndarray, list[str]]:
    """One normalised embedding per known identity (the mean of its images' embeddings)."""
    names = list_classes(layout.known)
    paths, owners = [], []
    for i, name in enumerate(names):
        for f in list_images(layout.known / name):
            paths.append(layout.known / name / f)
            owners.append(i)
    feats = embed(run, paths, tta)
    gallery = np.zeros((len(names), feats.shape[1]), dtype=np.float32)
    np.add.at(gallery, np.array(owners), feats)
    return gallery / np.linalg.norm(gallery, axis=1, keepdims=True), names


def verify_identities(run: LoadedRun, layout: Layout, tta: str, out: Path) -> dict[str, Any]:
    term = layout.term
    if layout.known is None or layout.unknown_dev is None:
        raise UserError(f"no verification data (known/, unknown_dev/) found under {layout.root}")
    gallery, names = _known_gallery(run, layout, tta)
    summary: dict[str, Any] = {"known_identities": len(names)}
    threshold = -1.0
    dev_files = list_images(layout.unknown_dev)
    if layout.ver_dev_labels is not None:
        truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"].to_numpy()
        if len(truth) != len(dev_files):
            raise UserError(f"{layout.ver_dev_labels} has {len(truth)} labels for {len(dev_files)} unknown_dev images")
        predicted, similarity = match_identities(
            embed(run, [layout.unknown_dev / f for f in dev_files], tta), gallery, names
        )
        threshold, accuracy = best_threshold(similarity, predicted, truth, term.no_match)
        summary.update(
            dev_accuracy=accuracy,
            dev_accuracy_no_threshold=float((predicted == truth).mean()),
            threshold=threshold,
            dev_images=len(truth),
        )
        print(f"verification dev accuracy {accuracy:.4f} at threshold {threshold:.3f} ({len(truth)} images)")
    if layout.unknown_test is not None:
        files = list_images(layout.unknown_test)
        ids = pd.read_csv(layout.ver_sample, dtype=str)["id"].tolist() if layout.ver_sample else files
        ordered = match_ids(ids, files, layout.ver_sample or layout.unknown_test)
        predicted, similarity = match_identities(
            embed(run, [layout.unknown_test / f for f in ordered], tta), gallery, names
        )
        labels = np.where(similarity >= threshold, predicted, term.no_match)
        path = out / "verification_submission.csv"
        write_submission(path, {"id": ids, "label": labels})
        summary["submission"] = str(path)
        print(f"wrote {path} ({len(ids)} rows)")
    return summary


def read_pairs(path: Path, labelled: bool) -> pd.DataFrame:
    columns = ["img1", "img2", "label"] if labelled else ["img1", "img2"]
    frame = pd.read_csv(path, sep=r"\s+", header=None, names=columns, dtype=str)
    if frame.isna().any().any():
        raise UserError(f"{path}: every line must hold {len(columns)} space-separated fields")
    return frame


def pair_scores(run: LoadedRun, base: Path, pairs: pd.DataFrame, tta: str) -> np.ndarray:
    """Cosine score of each pair; each distinct image is embedded once."""
    unique = sorted(set(pairs["img1"]) | set(pairs["img2"]))
    index = {name: i for i, name in enumerate(unique)}
    feats = embed(run, [base / name for name in unique], tta)
    a = feats[pairs["img1"].map(index).to_numpy()]
    b = feats[pairs["img2"].map(index).to_numpy()]
    return (a * b).sum(1)


def pair_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """EER (where false accepts equal false rejects), its threshold, ROC AUC and the best accuracy."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    accuracy = max(((scores >= t) == labels).mean() for t in thresholds[1:])
    return {
        "eer": float((fpr[i] + fnr[i]) / 2),
        "eer_threshold": float(thresholds[i]),
        "auc": float(roc_auc_score(labels, scores)),
        "best_accuracy": float(accuracy),
    }


def verify_pairs(run: LoadedRun, layout: Layout, tta: str, out: Path) -> dict[str, Any]:
    if layout.val_pairs is None:
        raise UserError(f"no verification pairs ({layout.term.val_pairs}) found under {layout.root}")
    base = layout.val_pairs.parent
    summary: dict[str, Any] = {}
    val = read_pairs(layout.val_pairs, labelled=True)
    metrics = pair_metrics(pair_scores(run, base, val, tta), val["label"].astype(int).to_numpy())
    summary.update({f"dev_{k}": v for k, v in metrics.items()}, dev_pairs=len(val))
    print(f"verification dev EER {metrics['eer']:.4f}, AUC {metrics['auc']:.4f} ({len(val)} pairs)")
    if layout.test_pairs is not None:
        test = read_pairs(layout.test_pairs, labelled=False)
        path = out / "verification_submission.csv"
        id_col, score_col = layout.term.pair_header
        write_submission(path, {id_col: range(len(test)), score_col: pair_scores(run, base, test, tta)})
        summary["submission"] = str(path)
        print(f"wrote {path} ({len(test)} rows)")
    return summary


def verify(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    tta: str | None = None,
    weights: str = "best",
    data_root: str | None = None,
) -> dict[str, Any]:
    """Score the dev verification set and write the test submission, for whichever family the term uses."""
    run = load_run(run_dir, weights)
    tta = tta or run.config.verify.tta
    out = Path(out_dir) if out_dir else Path("submissions") / run.name
    layout = find_layout(data_root or run.config.data.root, run.config.data.term)
    family = verify_identities if layout.term.verification == "identity" else verify_pairs
    summary = {"run": str(run.path), "term": layout.term.key, "tta": tta, **family(run, layout, tta, out)}
    write_json(out / "verify.json", summary)
    return summary
