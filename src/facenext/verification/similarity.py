"""How verification scores a split: cosine similarity, after the split's own unlabelled images have refined it.

Both refinements use only the images the competition gives as a set (a split's unknown faces and the known gallery,
or every image of a pair list), never a label, and both are chosen on dev like a threshold: query expansion
(``expansion``: each embedding averaged with its nearest images) and then k-reciprocal re-ranking (``reranking``:
distances from the neighbours two images share). Scores are similarities: higher means more alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .expansion import expand
from .reranking import KReciprocal

PLAIN = "plain cosine"  # how scores without expansion or re-ranking are described (verify.json, pair_scores.npz)
PAIR_CHUNK = 8192  # pairs scored per step: extra memory is 2 x CHUNK x embedding size, whatever the number of pairs


def score_pairs(feats: np.ndarray, first: np.ndarray, second: np.ndarray, chunk: int = PAIR_CHUNK) -> np.ndarray:
    """Cosine score of each pair (rows ``first[i]``, ``second[i]`` of normalised ``feats``), a chunk at a time."""
    scores = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), chunk):
        a = np.take(feats, first[start : start + chunk], axis=0)
        b = np.take(feats, second[start : start + chunk], axis=0)
        scores[start : start + chunk] = np.einsum("ij,ij->i", a, b)
    return scores


@dataclass(frozen=True)
class Scoring:
    """``expand``: neighbours of query expansion (``verify.expand``); ``rerank``: k1 of k-reciprocal re-ranking
    (``verify.rerank``); 0 turns either off."""

    expand: int = 0  # a count already checked (``config.neighbours``, through ``choice.ScoringSetting``)
    rerank: int = 0

    def describe(self) -> str:
        parts = []
        if self.expand:
            parts.append(f"query expansion k={self.expand}")
        if self.rerank:
            parts.append(f"re-ranking k1={self.rerank}")
        return ", ".join(parts) or PLAIN

    def block(self, feats: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Scores of each of ``rows`` against each of ``cols`` (indices into ``feats``, the split's normalised
        embeddings and whatever they are compared with)."""
        feats, reranked = self._refine(feats)
        return feats[rows] @ feats[cols].T if reranked is None else 1.0 - reranked.distance(rows, cols)

    def pairs(self, feats: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The score of each pair (``first[i]``, ``second[i]``) of rows of ``feats``."""
        feats, reranked = self._refine(feats)
        return score_pairs(feats, first, second) if reranked is None else 1.0 - reranked.pair_distance(first, second)

    def _refine(self, feats: np.ndarray) -> tuple[np.ndarray, KReciprocal | None]:
        """The expanded embeddings, and their re-ranking where asked (two images have no neighbours to share)."""
        feats = expand(feats, self.expand)
        return feats, KReciprocal(feats, self.rerank) if self.rerank and len(feats) > 2 else None
