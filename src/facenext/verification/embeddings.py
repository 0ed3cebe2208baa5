"""Embeddings of a split, L2-normalised and merged over the TTA views, cached per run in ``embeddings_<split>.npz``.

A cache file is keyed by a fingerprint of the weights file (name, mtime, size), the TTA and the image size, so new
weights or another TTA recompute, and a second ``verify`` embeds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference import LoadedRun, embed, load_run
from ..io import write_npz


@dataclass(frozen=True)
class RunFacts:
    """What verification reads from a run folder besides the model."""

    weights: str
    weights_file: Path
    image_size: int
    tta: str  # the run's default verification TTA
    data_root: str
    term: str
    expand: int  # the run's default query expansion (verify.expand)
    rerank: int  # the run's default re-ranking k1 (verify.rerank)
    gallery: str  # the run's default identity gallery (verify.gallery)


def open_run(run_dir: str | Path, weights: str) -> tuple[LoadedRun, RunFacts]:
    """The run's model with ``weights`` and the facts verification needs: the one place that reads the run folder."""
    run = load_run(run_dir, weights)
    data = run.config.data
    weights_file = run.folder.weights_file(weights)
    v = run.config.verify
    return run, RunFacts(
        weights, weights_file, data.image_size, v.tta, data.root, data.term, v.expand, v.rerank, v.gallery
    )


def weights_fingerprint(facts: RunFacts, tta: str) -> str:
    """Identifies the embeddings a run gives: its weights file (name, mtime, size), TTA and image size."""
    stat = facts.weights_file.stat()
    return json.dumps(
        {
            "weights": facts.weights,
            "file": facts.weights_file.name,
            "mtime_ns": stat.st_mtime_ns,
            "size": stat.st_size,
            "tta": tta,
            "image_size": facts.image_size,
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

    def _save(self, path: Path, cached: dict[str, np.ndarray]) -> None:
        names = sorted(cached)
        vectors = np.stack([cached[k] for k in names]).astype(np.float32)
        write_npz(path, {"paths": np.array(names), "vectors": vectors, "fingerprint": np.array(self.fingerprint)})

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
            self._save(path, cached)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cached[k] for k in keys]).astype(np.float32)
