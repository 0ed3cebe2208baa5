"""Transductive query expansion: each embedding averaged with its nearest neighbours among the images scored with it.

A competition's verification images come as a set: in identity matching a few dozen unknown faces of each person,
in pair lists every image in several pairs. Averaging each embedding with its most similar neighbours in that set
(alpha-weighted query expansion, Radenovic, Tolias and Chum 2018, "Fine-tuning CNN image retrieval with no human
annotation", section 5; database-side augmentation when done to the gallery too) pulls the images of one person
towards their common centre and averages out pose and lighting, which a single embedding carries. It uses no labels,
only the unlabelled test images themselves, as the test set of the competition gives them. ``verify.expand`` (k) is
chosen on dev like a threshold; 0 turns it off.
"""

from __future__ import annotations

import numpy as np

ALPHA = 3.0  # weights similarity**alpha: near neighbours count, far ones hardly (the paper's value)
CHUNK = 1024  # rows of the similarity matrix at a time: memory is CHUNK x images, whatever the number of images


def expand(feats: np.ndarray, k: int, alpha: float = ALPHA, chunk: int = CHUNK) -> np.ndarray:
    """``feats`` (rows L2-normalised) with each row replaced by the normalised, similarity**alpha-weighted sum of
    itself (weight 1) and its ``k`` most similar other rows; neighbours of negative similarity add nothing."""
    n = len(feats)
    k = min(k, n - 1)
    if k <= 0:
        return feats
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    out = feats.copy()
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        similarity = feats[rows] @ feats.T
        similarity[np.arange(similarity.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf  # not itself
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.clip(np.take_along_axis(similarity, nearest, axis=1), 0.0, None) ** alpha
        out[rows] += np.einsum("ij,ijd->id", weights, feats[nearest])
    return out / np.linalg.norm(out, axis=1, keepdims=True)
