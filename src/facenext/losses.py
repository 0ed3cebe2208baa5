"""Classification losses in one place: cross-entropy and the margin losses that make better face embeddings.

ArcFace (Deng et al. 2019) and CosFace (Wang et al. 2018) train a cosine classifier (``CosineClassifier``: logits
are ``scale * cos(angle between the embedding and each class centre)``) with a margin on the true class, so that
identities are separated by angle; cosine similarity between embeddings then verifies faces better than plain
cross-entropy features. Predictions need no margin: the argmax of the cosine logits is the class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

LOSSES = ("ce", "arcface", "cosface")
DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35}  # the papers' values


class CosineClassifier(nn.Module):
    """``scale * cos(embedding, class centre)``: a linear classifier on the unit sphere, without bias."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always fp32, autocast or not: in bf16 cosines near 1 round to exactly 1, and the margin loss's clamp then
        # cuts their gradient.
        with torch.autocast(x.device.type, enabled=False):
            return self.scale * F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


class MarginLoss(nn.Module):
    """Cross-entropy on cosine logits after adding an angular (ArcFace) or cosine (CosFace) margin to the true class."""

    def __init__(self, kind: str, scale: float, margin: float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if kind not in DEFAULT_MARGIN:
            raise ValueError(f"unknown margin loss {kind!r}: use arcface or cosface")
        self.kind, self.scale = kind, scale
        self.margin = DEFAULT_MARGIN[kind] if margin is None else margin
        self.label_smoothing = label_smoothing
        # ArcFace: beyond angle pi - m, cos(angle + m) would rise again; fall back to a linear penalty there.
        self.threshold = math.cos(math.pi - self.margin)
        self.fallback = math.sin(math.pi - self.margin) * self.margin

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = (logits.float() / self.scale).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cosine.gather(1, labels[:, None])
        if self.kind == "cosface":
            adjusted = target - self.margin
        else:
            sine = torch.sqrt(1 - target**2)
            with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
            adjusted = torch.where(target > self.threshold, with_margin, target - self.fallback)
        cosine = cosine.scatter(1, labels[:, None], adjusted)
        return F.cross_entropy(self.scale * cosine, labels, label_smoothing=self.label_smoothing)


def build_loss(kind: str, label_smoothing: float, soft_targets: bool, scale: float, margin: float | None) -> nn.Module:
    """The training loss: soft-target CE under mixup/cutmix, plain CE with label smoothing, or a margin loss."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}: use one of {', '.join(LOSSES)}")
    if kind == "ce":
        if soft_targets:
            return SoftTargetCrossEntropy()
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if soft_targets:
        raise ValueError(f"{kind} needs one true class per image: turn mixup and cutmix off")
    return MarginLoss(kind, scale, margin, label_smoothing)
