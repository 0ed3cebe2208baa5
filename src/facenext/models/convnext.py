"""ConvNeXt for face identification: the seed's lean variant and the paper's variants.

One implementation covers both: the lean model (BatchNorm everywhere, no layer scale, no head norm) that
won the F23 HW2P2 competition, and the paper's models (LayerNorm, layer scale, head norm). Module names match
timm's ``ConvNeXt`` so that timm checkpoints load after reshaping the MLP weights (see ``load_timm_state_dict``).

Every block works on NCHW tensors with 1x1 convolutions for the MLP, so the whole network runs in
channels-last memory format without a single permute in the BatchNorm variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import DropPath, LayerNorm2d
from timm.models.convnext import ConvNeXt as TimmConvNeXt
from torch import nn

from .head import FaceHead, FaceModel, init_linear

__all__ = ["VARIANTS", "ConvNeXt", "ConvNeXtSpec", "load_timm_state_dict"]


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return LayerNorm2d(channels, eps=1e-6)
    raise ValueError(f"unknown norm {kind!r}: use 'batch' or 'layer'")


class Block(nn.Module):
    """7x7 depthwise conv -> norm -> 1x1 expand -> GELU -> 1x1 project -> layer scale -> drop path + residual."""

    def __init__(
        self,
        dim: int,
        norm: str,
        mlp_ratio: int = 4,
        kernel_size: int = 7,
        layer_scale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = make_norm(norm, dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim, dim * mlp_ratio, 1))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Conv2d(dim * mlp_ratio, dim, 1))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x)))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        # The residual input is never modified in place, so no copy of it is needed.
        return x + self.drop_path(y)


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


@dataclass(frozen=True)
class ConvNeXtSpec:
    """The architecture of one variant; every field can be overridden from a config's ``model`` section."""

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    norm: str = "layer"  # "batch" (the seed's lean model) or "layer" (the paper)
    layer_scale: float | None = 1e-6  # None turns layer scale off (the seed's lean model)
    head_norm: bool = True  # norm after global pooling (the paper); the seed's model has none
    kernel_size: int = 7
    mlp_ratio: int = 4
    extra: dict = field(default_factory=dict)


VARIANTS: dict[str, ConvNeXtSpec] = {
    # The seed's F23 winner: 12.1 M parameters with 7001 classes, under the 21 M competition limit.
    "lean": ConvNeXtSpec(
        dims=(50, 175, 250, 400), depths=(6, 5, 4, 4), norm="batch", layer_scale=None, head_norm=False
    ),
    # The paper's models (Liu et al. 2022, table 9).
    "tiny": ConvNeXtSpec(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3)),
    "small": ConvNeXtSpec(dims=(96, 192, 384, 768), depths=(3, 3, 27, 3)),
    "base": ConvNeXtSpec(dims=(128, 256, 512, 1024), depths=(3, 3, 27, 3)),
    # Small widths of the lean design for CPU tests and the demo.
    "lean_nano": ConvNeXtSpec(
        dims=(24, 48, 96, 160), depths=(1, 1, 3, 1), norm="batch", layer_scale=None, head_norm=False
    ),
    "lean_micro": ConvNeXtSpec(
        dims=(32, 64, 128, 256), depths=(2, 2, 4, 2), norm="batch", layer_scale=None, head_norm=False
    ),
}


class ConvNeXt(FaceModel):
    """A ConvNeXt trunk (stem and stages) with the face head (``FaceHead``): its embedding serves verification.

    Parameter names are those of every checkpoint this project wrote (``stem.*``, ``stages.*``, ``head.*``), which
    are also timm's ``ConvNeXt`` names.

    Args:
        num_classes: identities to classify; 0 builds a pure embedding network.
        dims: channels of each stage.
        depths: blocks in each stage.
        norm: ``"batch"`` or ``"layer"``, used in the stem, the blocks and the downsampling layers.
        layer_scale: initial value of the per-channel block output scale, or None for none.
        head_norm: normalise the pooled features before the classifier.
        embed_dim: when set, a linear projection (plus BatchNorm1d) to this size gives the embedding.
        neck: ``"none"``, or ``"bn"`` for a BatchNorm1d neck on the pooled features (BNNeck) giving the embedding.
        pool: ``"avg"`` (global average) or ``"gdc"`` (a learnt weight per position: ``DepthwisePool``).
        image_size: the training input's side, which sets the last map's side that GDC weighs (it is divided by 4 in
            the stem and by 2 in each later stage).
        drop_path_rate: stochastic depth rate of the last block; it rises linearly from 0 over all blocks.
        drop_rate: dropout before the classifier.
        kernel_size: depthwise convolution kernel.
        mlp_ratio: expansion of the block MLP.
        init_std: standard deviation of the truncated-normal initialisation of convs and linears.
        in_chans: input channels.
        classifier: ``"linear"``, or ``"cosine"`` (normalised weights and features, for ArcFace/CosFace).
        cosine_scale: the cosine classifier's logit scale.
    """

    def __init__(
        self,
        num_classes: int,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (3, 3, 9, 3),
        norm: str = "layer",
        layer_scale: float | None = 1e-6,
        head_norm: bool = True,
        embed_dim: int | None = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        kernel_size: int = 7,
        mlp_ratio: int = 4,
        init_std: float = 0.02,
        in_chans: int = 3,
        classifier: str = "linear",
        cosine_scale: float = 30.0,
        neck: str = "none",
        pool: str = "avg",
        image_size: int = 224,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {tuple(dims)} and depths {tuple(depths)} must have the same length")
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), make_norm(norm, dims[0]))
        # The paper's stochastic depth: linear from 0 at the first block to the rate at the last.
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, first = [], 0
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            down = (
                nn.Sequential(make_norm(norm, dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2))
                if i > 0
                else nn.Identity()
            )
            blocks = [Block(dim, norm, mlp_ratio, kernel_size, layer_scale, rates[first + j]) for j in range(depth)]
            stages.append(Stage(down, blocks))
            first += depth
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        head_norm_layer = make_norm(norm, dims[-1]) if head_norm else None
        self.head = FaceHead(
            dims[-1],
            num_classes,
            head_norm_layer,
            embed_dim,
            drop_rate,
            classifier,
            cosine_scale,
            neck,
            pool,
            max(1, image_size // (4 * 2 ** (len(dims) - 1))),
        )
        self.init_std = init_std
        self.apply(lambda module: init_linear(module, init_std))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map."""
        return self.stages(self.stem(x))


def load_timm_state_dict(model: ConvNeXt, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a timm ``ConvNeXt`` state dict (e.g. ``convnext_tiny``) into ``model``.

    timm's paper variants use ``nn.Linear`` for the block MLP where this model uses 1x1 convolutions; their
    weights differ only by two trailing singleton dimensions.
    """
    own = model.state_dict()
    converted = {}
    for name, tensor in state_dict.items():
        if name not in own:
            raise KeyError(f"timm parameter {name!r} has no counterpart in this model")
        converted[name] = tensor.reshape(own[name].shape)
    model.load_state_dict(converted)


def _scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode is ``x * scale + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _fold_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv -> bn becomes one conv."""
    scale, shift = _scale_shift(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias * scale + shift)


@torch.no_grad()
def _fold_before(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """bn -> conv becomes one conv; exact because the downsampling conv has no padding."""
    scale, shift = _scale_shift(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=scale.device)
    conv.bias = nn.Parameter(bias + (conv.weight * shift.view(1, -1, 1, 1)).sum((1, 2, 3)))
    conv.weight.mul_(scale.view(1, -1, 1, 1))


def _convnext_trunk(model: nn.Module) -> nn.Module | None:
    """Ours or timm's ConvNeXt (the same module names), on its own or as a face model's backbone; else None."""
    for candidate in (model, getattr(model, "backbone", None)):
        if isinstance(candidate, (ConvNeXt, TimmConvNeXt)):
            return candidate
    return None


def fuse_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm of a BatchNorm ConvNeXt (the lean variant, or timm's ConvNeXt built with BatchNorm2d and
    ``conv_mlp``) into its convolution, for inference.

    The model must be in eval mode and is changed in place; it computes the same function with about a fifth fewer
    memory passes. The head's norms stay (the face head's BatchNorm1d gives the embedding). Returns how many norms
    were folded (0 for LayerNorm variants and other models).
    """
    trunk = _convnext_trunk(model)
    if trunk is None or model.training:
        return 0
    folded = 0
    if isinstance(trunk.stem, nn.Sequential) and len(trunk.stem) == 2 and isinstance(trunk.stem[1], nn.BatchNorm2d):
        _fold_after(trunk.stem[0], trunk.stem[1])
        trunk.stem[1] = nn.Identity()
        folded += 1
    for stage in trunk.stages:
        if isinstance(stage.downsample, nn.Sequential) and isinstance(stage.downsample[0], nn.BatchNorm2d):
            _fold_before(stage.downsample[0], stage.downsample[1])
            stage.downsample[0] = nn.Identity()
            folded += 1
        for block in stage.blocks:
            # timm's block without conv_mlp normalises channels-last tensors after a permute: nothing to fold there.
            if isinstance(block.norm, nn.BatchNorm2d) and getattr(block, "use_conv_mlp", True):
                _fold_after(block.conv_dw, block.norm)
                block.norm = nn.Identity()
                folded += 1
    return folded
