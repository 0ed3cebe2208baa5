"""k-reciprocal re-ranking: the paper's formulas computed densely agree with the sparse code, and single gallery
photos match their people better after it."""

from __future__ import annotations

import numpy as np
import pytest

from facenext.errors import UserError
from facenext.verification.choice import ScoringSetting
from facenext.verification.reranking import KReciprocal
from facenext.verification.similarity import Scoring

from .conftest import noisy_clusters


def dense_reference(feats: np.ndarray, k1: int, k2: int, lam: float = 0.3) -> np.ndarray:
    """Zhong et al. 2017 (section 3) as written, with dense n x n matrices: the full re-ranked distance matrix. As in
    the module, the final mix scales the plain distance by the largest of all, not by each row's largest."""
    n = len(feats)
    dist = 2 - 2 * feats.astype(np.float64) @ feats.T
    dist = dist / dist.max(1, keepdims=True)  # each row by its largest distance
    sims = feats @ feats.T
    np.fill_diagonal(sims, np.inf)
    rank = np.argsort(-sims, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]}

    v = np.zeros((n, n))
    for i in range(n):
        members = reciprocal(i, k1)
        for j in list(members):
            candidate = reciprocal(j, round(k1 / 2))
            if len(candidate & reciprocal(i, k1)) > 2 / 3 * len(candidate):
                members |= candidate
        members = sorted(members)
        v[i, members] = np.exp(-dist[i, members]) / np.exp(-dist[i, members]).sum()
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.array([[1 - np.minimum(a, b).sum() / np.maximum(a, b).sum() for b in v] for a in v])
    plain = 2 - 2 * feats.astype(np.float64) @ feats.T
    return (1 - lam) * jaccard + lam * plain / plain.max()


@pytest.mark.parametrize("k1, k2", [(6, 2), (10, 3), (4, 1)])
def test_sparse_reranking_equals_the_papers_dense_formulas(k1, k2):
    feats, _ = noisy_clusters(people=6, images=7, noise=1.0, seed=1)
    expected = dense_reference(feats, k1, k2)
    ranked = KReciprocal(feats, k1, k2)
    rows, cols = np.arange(0, 42, 3), np.arange(42)
    np.testing.assert_allclose(ranked.distance(rows, cols), expected[np.ix_(rows, cols)], atol=1e-5)
    first, second = np.array([0, 5, 17, 41, 9]), np.array([1, 30, 17, 2, 40])
    np.testing.assert_allclose(ranked.pair_distance(first, second), expected[first, second], atol=1e-5)
    for chunk in (1, 5):  # finding neighbours, or distances, a few rows at a time changes nothing
        found = KReciprocal(feats, k1, k2, chunk=chunk).distance(rows, cols, chunk=chunk)
        np.testing.assert_allclose(found, expected[rows][:, cols], atol=1e-5)
    np.testing.assert_allclose(ranked.pair_distance(second, first), ranked.pair_distance(first, second))  # symmetric
    assert ranked.pair_distance([], []).shape == (0,)


def test_one_photo_per_person_matches_better_after_reranking():
    # 15 people, each with one gallery photo and 12 unlabelled photos; as in F23, match each photo to the gallery
    feats, owners = noisy_clusters(people=15, images=13, noise=1.3, seed=2)
    gallery = np.flatnonzero(np.arange(len(owners)) % 13 == 0)
    queries = np.setdiff1d(np.arange(len(owners)), gallery)
    cosine = Scoring().block(feats, queries, gallery)
    reranked = Scoring(rerank=12).block(feats, queries, gallery)
    accuracy = [float((owners[gallery][s.argmax(1)] == owners[queries]).mean()) for s in (cosine, reranked)]
    assert accuracy[0] < 0.8 and accuracy[1] > accuracy[0] + 0.07, accuracy  # 0.72 -> 0.82
    pairs = Scoring(rerank=12).pairs(feats, queries, gallery[owners[queries]])  # each photo with its own person
    np.testing.assert_allclose(pairs, reranked[np.arange(len(queries)), owners[queries]], atol=1e-6)


def test_k_is_capped_at_the_images_there_are_and_negative_counts_are_refused():
    feats, _ = noisy_clusters(people=2, images=2, noise=0.5)
    distance = KReciprocal(feats, 50).distance(np.arange(4), np.arange(4))
    assert distance.shape == (4, 4) and np.isfinite(distance).all()
    assert np.allclose(np.diag(distance), distance.min(1))  # each image is nearest itself
    with pytest.raises(UserError, match="--rerank -2"):
        ScoringSetting(rerank=-2)
