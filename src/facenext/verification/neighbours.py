"""The nearest neighbours of each L2-normalised embedding among the others, a chunk of rows at a time, so that memory
is chunk x images whatever the number of images: what query expansion and re-ranking both start from."""

from __future__ import annotations

import numpy as np

CHUNK = 1024  # rows of the similarity matrix at a time


def nearest_neighbours(feats: np.ndarray, k: int, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k + 1`` nearest rows by cosine similarity, itself first (``k < len(feats)``); their similarities
    (itself: inf); and each row's largest squared distance to any row (2 - 2 cos for normalised rows)."""
    n = len(feats)
    nearest = np.empty((n, k + 1), dtype=np.int64)
    similarities = np.empty((n, k + 1), dtype=np.float32)
    farthest = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        similarity = feats[rows] @ feats.T
        farthest[rows] = 2.0 - 2.0 * similarity.min(1)
        similarity[np.arange(len(rows)), rows] = np.inf  # itself first, whatever its duplicates
        top = (
            np.argpartition(-similarity, k, axis=1)[:, : k + 1] if k + 1 < n else np.tile(np.arange(n), (len(rows), 1))
        )
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        nearest[rows] = np.take_along_axis(top, order, axis=1)
        similarities[rows] = np.take_along_axis(similarity, nearest[rows], axis=1)
    return nearest, similarities, np.maximum(farthest, 1e-12)
