"""The face head every model ends in, whatever its backbone: the embedding verification compares, and the classifier.

A face model (``FaceModel``) is a backbone plus one ``FaceHead``. The backbone is this project's ConvNeXt trunk or
any timm model; the head pools a feature map if it gets one, then gives the embedding (the pooled features, a
projection, or a BN neck) and the classifier on it (linear, or cosine for the margin losses of ``facenext.losses``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from ..losses import CosineClassifier

__all__ = ["NECKS", "POOLS", "DepthwisePool", "FaceHead", "FaceModel", "bn_neck", "init_linear"]

NECKS = ("none", "bn")
POOLS = ("avg", "gdc")
CLASSIFIERS = ("linear", "cosine")


def bn_neck(dim: int) -> nn.BatchNorm1d:
    """BNNeck (Luo et al. 2019, "Bag of tricks and a strong baseline for deep person re-identification"): a
    BatchNorm1d whose bias stays zero, so that the normalised features stay centred on the origin, where cosine
    similarity separates them best; verification uses its output (running statistics in eval mode)."""
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


def init_linear(module: nn.Module, std: float) -> None:
    """Truncated-normal weights and zero biases for convolutions and linear layers (ConvNeXt's initialisation)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DepthwisePool(nn.Module):
    """Global depthwise convolution (GDC; Chen et al. 2018, "MobileFaceNets"): one learnt weight per channel and
    position of the last feature map, then BatchNorm. A face crop is centred, so its middle and its corners need not
    count alike, as they do under global average pooling.

    The map is averaged onto ``grid`` x ``grid`` first when its size differs, so inputs of another size (TTA scales)
    still give an embedding.
    """

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(dim, dim, grid, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.adaptive_avg_pool2d(x, self.grid)
        return self.bn(self.conv(x))


class FaceHead(nn.Module):
    """Pool (of a feature map: global average, or GDC) -> optional norm -> embedding (pooled, projected or BN neck)
    -> dropout -> classifier.

    The embedding ``features`` returns is the classifier's input, so the cosine classifier of a margin loss shapes
    exactly the vectors that verification compares.

    Args:
        in_dim: channels of the backbone's output.
        num_classes: identities to classify; 0 leaves the classifier out (an embedding network).
        norm: applied to the pooled (N, C, 1, 1) features, or None (the in-house ConvNeXt's head norm).
        embed_dim: when set, a linear projection (plus BatchNorm1d) to this size gives the embedding.
        drop: dropout before the classifier.
        classifier: ``"linear"``, or ``"cosine"`` (normalised weights and features, for ArcFace/CosFace).
        cosine_scale: the cosine classifier's logit scale.
        neck: ``"none"``, or ``"bn"`` for a BatchNorm1d neck on the pooled features (BNNeck) giving the embedding.
        pool: ``"avg"`` (global average) or ``"gdc"`` (``DepthwisePool``) for a feature map.
        pool_grid: the side of the feature map GDC weighs (the last map's at the training size).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        norm: nn.Module | None = None,
        embed_dim: int | None = None,
        drop: float = 0.0,
        classifier: str = "linear",
        cosine_scale: float = 30.0,
        neck: str = "none",
        pool: str = "avg",
        pool_grid: int = 3,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: use {' or '.join(POOLS)}")
        if neck not in NECKS:
            raise ValueError(f"unknown neck {neck!r}: use {' or '.join(NECKS)}")
        if neck != "none" and embed_dim:
            raise ValueError("model.embed_dim's projection already ends in BatchNorm1d: set model.neck=none with it")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}: use linear or cosine")
        # Registered in this order (norm, embed, neck, fc) since checkpoints began: optimizer states follow it.
        self.norm = norm if norm is not None else nn.Identity()
        # A projection gives verification a compact embedding; its BatchNorm1d makes cosine similarity behave well.
        self.embed = (
            nn.Sequential(nn.Linear(in_dim, embed_dim, bias=False), nn.BatchNorm1d(embed_dim)) if embed_dim else None
        )
        self.neck = bn_neck(in_dim) if neck == "bn" else None
        self.embed_dim = embed_dim or in_dim
        self.drop = nn.Dropout(drop)
        if num_classes <= 0:
            self.fc = nn.Identity()
        elif classifier == "cosine":  # for margin losses (facenext.losses)
            self.fc = CosineClassifier(self.embed_dim, num_classes, cosine_scale)
        else:
            # BNNeck's classifier has no bias: the neck centres the features, and the paper drops it.
            self.fc = nn.Linear(self.embed_dim, num_classes, bias=self.neck is None)
        # Last, so that runs without it keep their parameter order.
        self.pool = DepthwisePool(in_dim, pool_grid) if pool == "gdc" else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding of a feature map (N, C, H, W), which is pooled first, or of pooled features (N, C)."""
        if x.ndim == 4:
            x = self.pool(x) if self.pool is not None else x.mean((2, 3), keepdim=True)
        x = self.norm(x).flatten(1)
        if self.embed is not None:
            x = self.embed(x)
        return self.neck(x) if self.neck is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


class FaceModel(nn.Module):
    """A backbone's output through one ``FaceHead``: logits, or with ``return_feats`` the embedding.

    Subclasses hold the backbone and ``self.head`` and define ``forward_features``: a feature map, which the head
    pools, or pooled features. ``num_classes`` and ``embed_dim`` are what predict, verify and ensembles read.
    """

    head: FaceHead
    num_classes: int

    @property
    def embed_dim(self) -> int:
        return self.head.embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> torch.Tensor:
        """Logits, or with ``return_feats`` the embedding: the classifier's input (pooled, projected or BN-neck)."""
        x = self.forward_features(x)
        return self.head.features(x) if return_feats else self.head(x)
