"""k-reciprocal re-ranking: distances that count the neighbours two images share, not only their own similarity.

Zhong, Zheng, Cao and Li 2017, "Re-ranking Person Re-identification with k-reciprocal Encoding" (CVPR), section 3.
Two images of one person rarely look alike in every photo, but they have the same people around them: each image
keeps its k1-reciprocal neighbours (it is among their k1 nearest, and they among its), widened by the reciprocal
sets of those neighbours that mostly agree with it, weighted by exp(-distance); the Jaccard distance of two such
sparse sets, mixed with the plain distance, orders matches better than the cosine alone. With one gallery photo per
known person (F23's identity matching) the photo's set fills with the unlabelled photos of the same person, which is
where a single photo is weakest. Like query expansion it uses only the split's own unlabelled images; k1 should be
about the number of images one person has in the split, and is chosen on dev (``verify.rerank``).

The sets are sparse (a few dozen entries per image), so memory grows with the number of images, not its square:
the nearest neighbours are found a chunk of rows at a time, and distances are computed only for the pairs asked.
One departure from the paper: in the final mix the plain distance is scaled by the largest distance between any two
images, not by each query's own largest, so that a pair scores the same either way round and one threshold means the
same for every image (dev accuracy on the sample and on ORL moved by less than 0.003 either way).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .neighbours import CHUNK, nearest_neighbours

LAMBDA = 0.3  # weight of the plain distance in the final one (the paper's value)
K2_FRACTION = 0.3  # local query expansion over round(0.3 k1) neighbours: the paper's k2=6 for k1=20


def reciprocal_sets(nearest: np.ndarray, k: int) -> list[np.ndarray]:
    """For each row, the rows among its ``k`` nearest (and itself) that have it among their ``k`` nearest."""
    n = len(nearest)
    cols = nearest[:, : k + 1]
    is_near = sparse.csr_matrix(
        (np.ones(cols.size, dtype=np.int8), cols.ravel(), np.arange(0, cols.size + 1, cols.shape[1])), shape=(n, n)
    )
    both = is_near.multiply(is_near.T).tocsr()
    return [both.indices[both.indptr[i] : both.indptr[i + 1]] for i in range(n)]


class KReciprocal:
    """Re-ranked distances between the rows of ``feats`` (L2-normalised embeddings of one split and its gallery).

    Args:
        feats: one normalised embedding per image, every image the scores may involve.
        k1: neighbours of the k-reciprocal sets; capped at the number of other images.
        k2: neighbours whose sets are averaged into each image's (local query expansion); default round(0.3 k1).
        lam: weight of the plain distance in the final distance.
        chunk: rows of the similarity matrix held at a time while finding neighbours.
    """

    def __init__(
        self, feats: np.ndarray, k1: int, k2: int | None = None, lam: float = LAMBDA, chunk: int = CHUNK
    ) -> None:
        n = len(feats)
        self.feats = np.ascontiguousarray(feats, dtype=np.float32)
        self.lam = lam
        k1 = max(1, min(k1, n - 1))
        k2 = max(1, min(round(K2_FRACTION * k1) if k2 is None else k2, k1 + 1))
        nearest, _, self.farthest = nearest_neighbours(self.feats, k1, chunk)
        encoded = self._encode(nearest, k1)
        if k2 > 1:  # each set becomes the mean of its k2 nearest images' sets (itself included)
            cols = nearest[:, :k2]
            average = sparse.csr_matrix(
                (np.full(cols.size, 1.0 / k2), cols.ravel(), np.arange(0, cols.size + 1, k2)), shape=(n, n)
            )
            encoded = average @ encoded
        self.sets = encoded.tocsr()
        self.sets.sort_indices()

    def _encode(self, nearest: np.ndarray, k1: int) -> sparse.csr_matrix:
        """Each image's widened k1-reciprocal set, weighted by exp(-normalised distance) and summing to one."""
        n = len(nearest)
        full, half = reciprocal_sets(nearest, k1), reciprocal_sets(nearest, round(k1 / 2))
        indptr, indices, weights = [0], [], []
        for i in range(n):
            # a neighbour's own (smaller) reciprocal set joins when two thirds of it are already in this one
            agreeing = [half[j] for j in full[i] if np.isin(half[j], full[i]).sum() > 2 / 3 * len(half[j])]
            members = np.unique(np.concatenate([full[i], *agreeing]))
            distance = (2.0 - 2.0 * self.feats[members] @ self.feats[i]) / self.farthest[i]
            w = np.exp(-distance)
            indices.append(members)
            weights.append(w / w.sum())
            indptr.append(indptr[-1] + len(members))
        return sparse.csr_matrix((np.concatenate(weights), np.concatenate(indices), np.array(indptr)), shape=(n, n))

    def distance(self, rows: np.ndarray, cols: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
        """The re-ranked distance of each of ``rows`` to each of ``cols`` (indices into ``feats``): a dense block,
        computed ``chunk`` rows at a time (memory: the block, plus chunk x images)."""
        rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
        by_col = self.sets.tocsc()
        out = np.empty((len(rows), len(cols)), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            block = rows[start : start + chunk]
            shared = np.stack([self._shared_row(by_col, i)[cols] for i in block])
            cosine = self.feats[block] @ self.feats[cols].T
            out[start : start + chunk] = self._mix(shared, cosine)
        return out

    def _shared_row(self, by_col: sparse.csc_matrix, i: int) -> np.ndarray:
        """sum_k min(set_i[k], set_j[k]) for every image j: row i's entries met with each column's, summed per row."""
        start, stop = self.sets.indptr[i], self.sets.indptr[i + 1]
        members, weights = self.sets.indices[start:stop], self.sets.data[start:stop]
        starts, lengths = by_col.indptr[members], np.diff(by_col.indptr)[members]
        at = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        overlap = np.minimum(np.repeat(weights, lengths), by_col.data[at])
        return np.bincount(by_col.indices[at], overlap, minlength=len(self.feats))

    def pair_distance(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The re-ranked distance of each pair (``first[i]``, ``second[i]``)."""
        first, second = np.asarray(first, dtype=np.intp), np.asarray(second, dtype=np.intp)
        shared = np.empty(len(first))
        for p, (i, j) in enumerate(zip(first, second, strict=True)):
            a = slice(self.sets.indptr[i], self.sets.indptr[i + 1])
            b = slice(self.sets.indptr[j], self.sets.indptr[j + 1])
            _, ia, ib = np.intersect1d(self.sets.indices[a], self.sets.indices[b], True, return_indices=True)
            shared[p] = np.minimum(self.sets.data[a][ia], self.sets.data[b][ib]).sum()
        return self._mix(shared, np.einsum("ij,ij->i", self.feats[first], self.feats[second]))

    def _mix(self, shared: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        """The final distance from the summed minima of two sets and the two images' cosine similarity."""
        # The sets sum to one, so the sum of maxima is 2 - the sum of minima: Jaccard = 1 - min / (2 - min).
        jaccard = 1.0 - shared / (2.0 - shared)
        plain = np.clip((2.0 - 2.0 * cosine) / self.farthest.max(), 0.0, 1.0)  # rounding can pass 1 (or 0)
        return ((1.0 - self.lam) * jaccard + self.lam * plain).astype(np.float32)
