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

from .neighbours import CHUNK, nearest_neighbours

ALPHA = 3.0  # weights similarity**alpha: near neighbours count, far ones hardly (the paper's value)


def expand(feats: np.ndarray, k: int, alpha: float = ALPHA, chunk: int = CHUNK) -> np.ndarray:
    """``feats`` (rows L2-normalised) with each row replaced by the normalised, similarity**alpha-weighted sum of
    itself (weight 1) and its ``k`` most similar other rows; neighbours of negative similarity add nothing."""
    n = len(feats)
    k = min(k, n - 1)
    if k <= 0:
        return feats
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    nearest, similarities, _ = nearest_neighbours(feats, k, chunk)
    others, weights = nearest[:, 1:], np.clip(similarities[:, 1:], 0.0, None) ** alpha  # column 0 is itself
    out = feats.copy()
    for start in range(0, n, chunk):  # the neighbours' embeddings, chunk x k x size, a chunk at a time
        rows = slice(start, start + chunk)
        out[rows] += np.einsum("ij,ijd->id", weights[rows], feats[others[rows]])
    return out / np.linalg.norm(out, axis=1, keepdims=True)
