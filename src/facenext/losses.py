"""Classification losses in one place: cross-entropy and the margin losses that make better face embeddings.

ArcFace (Deng et al. 2019) and CosFace (Wang et al. 2018) train a cosine classifier (``CosineClassifier``: logits
are ``scale * cos(angle between the embedding and each class centre)``) with a margin on the true class, so that
identities are separated by angle; cosine similarity between embeddings then verifies faces better than plain
cross-entropy features. Predictions need no margin: the argmax of the cosine logits is the class.

Margin losses are trained as the papers and the course do: one true class per image (no mixup or cutmix) and no
label smoothing. Their scale and margin default to a rule (``default_scale``, ``default_margin``) rather than one
number for every dataset, and ``resolve_config`` turns a config's nulls into the values a run uses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .errors import UserError

if TYPE_CHECKING:
    from .config import Config

LOSSES = ("ce", "arcface", "cosface")
DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35}  # the papers' values
CE_LABEL_SMOOTHING = 0.1  # train.label_smoothing: null under cross-entropy
PAPER_SCALE = 64.0
# CASIA-WebFace: the set of ArcFace's ablations (Deng et al. 2019, table 1) and of CosFace (Wang et al. 2018), both
# trained there with s = 64 and m = 0.5 (0.35 for CosFace).
PAPER_CLASSES = 10_575
TARGET_PROBABILITY = 0.99


def scale_bound(num_classes: int, probability: float = TARGET_PROBABILITY) -> float:
    """The least scale at which softmax can give the true class ``probability`` (NormFace, Wang et al. 2017; CosFace
    eq. 6; the fixed-scale analysis of AdaCos, Zhang et al. 2019): s >= (C-1)/C * log((C-1) P / (1-P)).

    It assumes a feature on its class centre and the centres spread as far as they can go (mean cosine -1/(C-1));
    by Jensen's inequality it bounds the mean cosine, so it holds in any embedding dimension."""
    c = max(num_classes, 2)
    return (c - 1) / c * math.log((c - 1) * probability / (1 - probability))


def default_scale(num_classes: int) -> float:
    """``model.cosine_scale: null``: the papers' 64 at CASIA-WebFace's class count and above, and below it the same
    headroom over ``scale_bound`` (64 is 4.6 times the bound there): 26 for 8 classes, 37 for 40 (ORL), 62 for 7001
    (F23), 63 for 8631 (VGGFace2, F26). The bound alone (8 for 40 classes, 14 for 8631) assumes features on their
    centres; in training they sit far from them, and the margin lowers the true logit further."""
    ratio = scale_bound(num_classes) / scale_bound(PAPER_CLASSES)
    return float(round(min(PAPER_SCALE, PAPER_SCALE * ratio)))


def default_margin(kind: str, num_classes: int, embed_dim: int) -> float:
    """``train.margin: null``: the paper's margin (ArcFace 0.5 rad, CosFace 0.35) unless the embedding is too small
    for the class count to leave room for it.

    The room: half the angle between a class centre and its nearest neighbour. C centres fit a regular simplex when
    C <= D + 1 (at least 90 degrees apart); otherwise it is estimated, pessimistically, from random directions, whose
    largest cosine with C others is about sqrt(2 ln C / D). The margin shrinks with that room below ArcFace's 0.5 rad,
    never below a fifth of the paper's: 0.5 for 7001 or 8631 classes at D >= 64, 0.36 at D = 32 (CosFace 0.25)."""
    paper = DEFAULT_MARGIN[kind]
    if num_classes <= embed_dim + 1:
        return paper
    nearest = math.acos(min(1.0, math.sqrt(2 * math.log(num_classes) / embed_dim)))
    return round(paper * min(1.0, max(0.2, nearest / 2 / DEFAULT_MARGIN["arcface"])), 2)


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
    if label_smoothing:
        raise ValueError(f"{kind} is trained without label smoothing")
    return MarginLoss(kind, scale, margin)


def resolve_config(config: Config, num_classes: int, embed_dim: int | None, strict: bool = True) -> Config:
    """``config`` with the classifier, scale, margin and label smoothing a run uses in place of nulls.

    ``strict`` refuses what margin losses are not trained with (a UserError naming the key); without it only the
    nulls are filled, as loading a run's model needs. Values that do nothing (a linear classifier's scale, the margin
    of cross-entropy) become null, so that runs recorded before these defaults (scale 30) compare equal on resume."""
    m, t = config.model, config.train
    margin_loss = t.loss in DEFAULT_MARGIN
    classifier = m.classifier or ("cosine" if margin_loss else "linear")
    if strict and margin_loss:
        check_margin_training(config, classifier)
    scale = (m.cosine_scale or default_scale(num_classes)) if classifier == "cosine" else None
    margin = None
    if margin_loss:
        margin = t.margin if t.margin is not None else default_margin(t.loss, num_classes, embed_dim or num_classes)
    smoothing = t.label_smoothing
    if smoothing is None:
        smoothing = 0.0 if margin_loss else CE_LABEL_SMOOTHING
    return dataclasses.replace(
        config,
        model=dataclasses.replace(m, classifier=classifier, cosine_scale=scale),
        train=dataclasses.replace(t, margin=margin, label_smoothing=smoothing),
    )


def check_margin_training(config: Config, classifier: str) -> None:
    """A margin loss needs one true class per image and the cosine classifier, and is trained without smoothing."""
    t = config.train
    if t.mixup > 0 or t.cutmix > 0:
        raise UserError(f"train.loss={t.loss} needs one true class per image: set train.mixup=0 and train.cutmix=0")
    # Refused rather than quietly zeroed: the default (null) already means none under a margin loss, so a value here
    # was written on purpose (a config made for cross-entropy) and a user should know it does not apply. Smoothing
    # would pull the true class's logit down against the margin that pushes it up.
    if t.label_smoothing:
        raise UserError(
            f"train.loss={t.loss} is trained without label smoothing: set train.label_smoothing=0 (or null)"
        )
    if classifier != "cosine":
        raise UserError(f"train.loss={t.loss} trains a cosine classifier: set model.classifier=cosine (or null)")


def describe(config: Config, num_classes: int, embed_dim: int | None) -> str | None:
    """The line a run prints about the values ``resolve_config`` chose, or None for a plain linear classifier."""
    m, t = config.model, config.train
    if m.classifier != "cosine":
        return None
    text = f"cosine classifier, scale {m.cosine_scale:g} (model.cosine_scale) for {num_classes} classes"
    if t.loss in DEFAULT_MARGIN:
        size = f" for {embed_dim}-d embeddings" if embed_dim else ""
        text = f"{t.loss}: {text}, margin {t.margin:g} (train.margin){size}, no label smoothing or mixup"
    return text
