"""Pair scoring: the cosine similarity of each listed pair of images (S22's CSV pairs, F24-style text pairs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..combined import save_pair_scores
from ..competitions.families import pair_image_base
from ..data.layout import Layout, read_pairs
from ..errors import UserError
from ..submission import write_submission
from .choice import Choice, PairOutcome, ScoringSetting, choose
from .embeddings import EmbeddingCache
from .metrics import pair_metrics
from .plots import write_score_figures
from .similarity import Scoring

logger = logging.getLogger(__name__)


def pair_images(layout: Layout, pairs: pd.DataFrame) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The distinct images of a pair list, each once and resolved where the term keeps them (``ver_data/`` from S25
    on), and each pair's two positions in that list: embed the images once, then score the pairs."""
    base = pair_image_base(layout, pairs["img1"].iloc[0])
    codes, unique = pd.factorize(pd.concat([pairs["img1"], pairs["img2"]], ignore_index=True))
    return [base / name for name in unique], codes[: len(pairs)], codes[len(pairs) :]


def split_pair_scores(
    cache: EmbeddingCache, layout: Layout, split: str, pairs: pd.DataFrame, scoring: Scoring
) -> np.ndarray:
    """The score of each pair of a split; each distinct image is embedded once (and cached), and the split's images
    refine each other's scores as ``scoring`` says."""
    paths, first, second = pair_images(layout, pairs)
    return scoring.pairs(cache.get(split, paths), first, second)


def evaluate_pairs(
    cache: EmbeddingCache, layout: Layout, out: Path, setting: ScoringSetting
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, Choice]:
    """The field's metrics on the labelled dev pairs, scored as ``setting`` says or chooses, and the ROC and score
    figures: the summary entries, the scores, the labels and the scoring chosen."""
    val = read_pairs(layout.val_pairs, labelled=True, csv=layout.term.pairs_csv)
    paths, first, second = pair_images(layout, val)
    feats = cache.get("dev", paths)
    labels = val["label"].astype(int).to_numpy()
    by_auc = layout.term.ver_metric == "auc"  # as competitions.family_of reads it
    what = "dev ROC AUC" if by_auc else "dev 1 - EER"
    choice = choose(setting, lambda s: PairOutcome(s.pairs(feats, first, second), labels, by_auc), what)
    scores = choice.outcome.scores
    metrics = pair_metrics(scores, labels)
    summary: dict[str, Any] = {f"dev_{k}": v for k, v in metrics.items()}
    summary.update(dev_pairs=len(val))
    summary.update(write_score_figures(out, scores[labels == 1], scores[labels == 0], layout.term.key))
    folds = f" 10-fold accuracy {metrics['10fold_accuracy']:.4f}" if "10fold_accuracy" in metrics else ""
    logger.info(
        f"verification dev EER {metrics['eer']:.4f} (threshold {metrics['eer_threshold']:.3f}), "
        f"AUC {metrics['auc']:.4f}, TAR@FAR1e-3 {metrics['tar_at_far_0.001']:.4f}, "
        f"best accuracy {metrics['best_accuracy']:.4f}{folds} ({len(val)} pairs)"
    )
    return summary, scores, labels, choice


def write_pair_submission(path: Path, layout: Layout, scores: np.ndarray) -> dict[str, Any]:
    """The test submission at ``path``: one score per test pair, ids ``0..pairs-1``, under the term's header."""
    id_col, score_col = layout.term.pair_header
    write_submission(path, {id_col: range(len(scores)), score_col: scores}, layout=layout, kind="verification")
    logger.info(f"wrote {path} ({len(scores)} rows)")
    return {"submission": str(path)}


def verify_pairs(
    cache: EmbeddingCache, layout: Layout, out: Path, setting: ScoringSetting, weights: str | None = None
) -> tuple[dict[str, Any], Choice]:
    """Evaluate on the dev pairs and score the test pairs (when present) as dev chose (``setting``). The scores are
    saved for ensembles, with the ``weights`` id of the model; the test submission is written here, except for the
    combined task (F26), whose file also needs the classification part (``verification.command``)."""
    if layout.val_pairs is None:
        raise UserError(f"no verification pairs ({layout.term.val_pairs}) found under {layout.root}")
    summary, val_scores, labels, choice = evaluate_pairs(cache, layout, out, setting)
    scoring = choice.scoring
    test_scores = None
    if layout.test_pairs is not None:
        test = read_pairs(layout.test_pairs, labelled=False, csv=layout.term.pairs_csv)
        test_scores = split_pair_scores(cache, layout, "test", test, scoring)
        if not layout.family.one_file:
            summary.update(write_pair_submission(out / "verification_submission.csv", layout, test_scores))
    save_pair_scores(out, val_scores, labels, test_scores, scoring.describe(), weights)
    return summary, choice
