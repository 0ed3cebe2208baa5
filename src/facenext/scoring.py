"""Each epoch's dev score in the metric the term is ranked by, for training to report and keep ``best.pt`` by.

- identity-matching terms (F23 style): the dev classification accuracy;
- pair-scoring terms (S26 style): the EER on ``val_pairs.txt`` (the score is ``1 - EER``; S22: ROC AUC);
- the combined task (F26): ``0.5 x dev accuracy + 0.5 x (1 - EER)``.

The pair images are embedded with the model under training and scored with ``facenext.verification``'s own functions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import Config
from .data.datasets import FaceImages
from .data.layout import Layout, read_pairs
from .data.transforms import BatchToModel, eval_transform
from .device import autocast
from .errors import UserError


class DevPairs:
    """The labelled validation pairs: each distinct image embedded once per evaluation."""

    def __init__(self, layout: Layout, config: Config) -> None:
        from .verification.pairs import pair_images

        pairs = read_pairs(layout.val_pairs, labelled=True, csv=layout.term.pairs_csv)
        paths, self.first, self.second = pair_images(layout, pairs)
        missing = [p for p in paths if not p.is_file()]
        if missing:  # the dataset would put another image in each one's place: every score with it would be wrong
            raise UserError(
                f"{layout.val_pairs.name} names {len(missing)} images that do not exist (e.g. {missing[0]}): "
                "re-download the competition (`facenext check-data` lists them all)"
            )
        self.labels = pairs["label"].astype(int).to_numpy()
        size = config.data.image_size
        self.images = FaceImages(paths, None, eval_transform(size), size)
        self.batch_size, self.workers = config.predict.batch_size, config.data.num_workers

    @torch.no_grad()
    def metrics(self, model: nn.Module, to_model: BatchToModel, dtype: torch.dtype | None) -> dict[str, float]:
        """EER (and ROC AUC) of the model's cosine scores on the pairs."""
        from .verification.metrics import roc
        from .verification.similarity import score_pairs

        was_training = model.training
        model.eval()
        feats = []
        loader = DataLoader(self.images, batch_size=self.batch_size, num_workers=self.workers)
        for images, _ in loader:
            with autocast(to_model.device, dtype):
                feats.append(F.normalize(model(to_model(images), return_feats=True).float(), dim=1).cpu())
        model.train(was_training)
        scores = score_pairs(torch.cat(feats).numpy(), self.first, self.second)
        if not np.isfinite(scores).all() or len(set(self.labels)) < 2:
            return {"dev_eer": math.nan, "dev_auc": math.nan}
        curve = roc(scores, self.labels)
        return {"dev_eer": curve.eer, "dev_auc": curve.auc}


class TermScorer:
    """The term's dev score for an epoch: ``score(model, ...)`` gives the metrics.csv columns and the score."""

    def __init__(self, layout: Layout, config: Config) -> None:
        self.family = layout.family
        self.name = self.family.score_name
        self.pairs = DevPairs(layout, config) if self.family.dev_uses_pairs and layout.val_pairs is not None else None

    def score(
        self, model: nn.Module, to_model: BatchToModel, dtype: torch.dtype | None, dev_acc: float
    ) -> dict[str, float]:
        """``dev_score`` (higher is better) and, for pair terms, ``dev_eer``."""
        if self.pairs is None:
            return {"dev_score": dev_acc}
        found = self.pairs.metrics(model, to_model, dtype)
        return {
            "dev_eer": found["dev_eer"],
            "dev_score": self.family.dev_score(dev_acc, found["dev_eer"], found["dev_auc"]),
        }

    def summary(self, history: list[dict[str, Any]], best: float) -> dict[str, Any]:
        """The score's name, the best score and the dev accuracy and EER of the epoch that reached it."""
        summary: dict[str, Any] = {"score": self.name, "best_dev_score": best}
        rows = [r for r in history if isinstance(r.get("dev_score"), float) and not math.isnan(r["dev_score"])]
        if self.pairs is not None and rows:
            row = max(rows, key=lambda r: r["dev_score"])
            summary.update(best_dev_acc=row.get("dev_acc"), best_dev_eer=row.get("dev_eer"))
        return summary
