"""Pair scoring: the cosine similarity of each listed pair of images (S22's CSV pairs, F24-style text pairs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.layout import Layout
from ..errors import UserError
from ..submission import write_submission
from .embeddings import EmbeddingCache
from .metrics import pair_metrics
from .plots import write_score_figures

PAIR_CHUNK = 8192  # pairs scored per step: extra memory is 2 x CHUNK x embedding size, whatever the number of pairs


def read_pairs(path: Path, labelled: bool, csv: bool = False) -> pd.DataFrame:
    """Pairs as columns img1, img2 (and label): space-separated lines (F24 on), or S22's CSV with a header."""
    columns = ["img1", "img2", "label"] if labelled else ["img1", "img2"]
    if csv:
        frame = pd.read_csv(path, dtype=str)
        if frame.shape[1] < len(columns):
            raise UserError(f"{path}: expected columns like img_path1,img_path2{',gt' if labelled else ''}")
        frame = frame.iloc[:, : len(columns)].set_axis(columns, axis=1)
    else:
        frame = pd.read_csv(path, sep=r"\s+", header=None, names=columns, dtype=str)
    if frame.isna().any().any():
        raise UserError(f"{path}: every line must hold {len(columns)} fields")
    return frame


def score_pairs(feats: np.ndarray, first: np.ndarray, second: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Cosine score of each pair (rows ``first[i]``, ``second[i]`` of normalised ``feats``), a chunk at a time."""
    scores = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), chunk):
        a = np.take(feats, first[start : start + chunk], axis=0)
        b = np.take(feats, second[start : start + chunk], axis=0)
        scores[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return scores


def pair_scores(cache: EmbeddingCache, split: str, base: Path, pairs: pd.DataFrame) -> np.ndarray:
    """Cosine score of each pair; each distinct image is embedded once (and cached)."""
    codes, unique = pd.factorize(pd.concat([pairs["img1"], pairs["img2"]], ignore_index=True))
    first, second = codes[: len(pairs)], codes[len(pairs) :]
    feats = cache.get(split, [base / name for name in unique])
    return score_pairs(feats, first, second)


def evaluate_pairs(cache: EmbeddingCache, layout: Layout, out: Path) -> dict[str, Any]:
    """The field's metrics on the labelled dev pairs, and the ROC and score figures; the summary entries."""
    val = read_pairs(layout.val_pairs, labelled=True, csv=layout.term.pairs_csv)
    scores = pair_scores(cache, "dev", layout.val_pairs.parent, val)
    labels = val["label"].astype(int).to_numpy()
    metrics = pair_metrics(scores, labels)
    summary: dict[str, Any] = {f"dev_{k}": v for k, v in metrics.items()}
    summary.update(dev_pairs=len(val))
    summary.update(write_score_figures(out, scores[labels == 1], scores[labels == 0], layout.term.key))
    folds = f" 10-fold accuracy {metrics['10fold_accuracy']:.4f}" if "10fold_accuracy" in metrics else ""
    print(
        f"verification dev EER {metrics['eer']:.4f} (threshold {metrics['eer_threshold']:.3f}), "
        f"AUC {metrics['auc']:.4f}, TAR@FAR1e-3 {metrics['tar_at_far_0.001']:.4f}, "
        f"best accuracy {metrics['best_accuracy']:.4f}{folds} ({len(val)} pairs)"
    )
    return summary


def write_pair_submission(cache: EmbeddingCache, layout: Layout, out: Path) -> dict[str, Any]:
    """The test submission: one score per test pair, ids ``0..pairs-1``, under the term's header."""
    test = read_pairs(layout.test_pairs, labelled=False, csv=layout.term.pairs_csv)
    # both pair lists sit in one folder (the layout finds them together) and name images relative to it
    scores = pair_scores(cache, "test", layout.val_pairs.parent, test)
    id_col, score_col = layout.term.pair_header
    path = out / "verification_submission.csv"
    write_submission(path, {id_col: range(len(test)), score_col: scores}, layout=layout, kind="verification")
    print(f"wrote {path} ({len(test)} rows)")
    return {"submission": str(path)}


def verify_pairs(cache: EmbeddingCache, layout: Layout, out: Path) -> dict[str, Any]:
    """Evaluate on the dev pairs and write the test submission (when test pairs are present)."""
    if layout.val_pairs is None:
        raise UserError(f"no verification pairs ({layout.term.val_pairs}) found under {layout.root}")
    summary = evaluate_pairs(cache, layout, out)
    if layout.test_pairs is not None:
        summary.update(write_pair_submission(cache, layout, out))
    return summary
