"""Build any model the configs name: this project's ConvNeXt variants or any timm backbone."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import UserError
from .convnext import VARIANTS, ConvNeXt

if TYPE_CHECKING:
    from ..config import Config

TIMM_PREFIX = "timm:"


class TimmFaceModel(nn.Module):
    """Gives a timm classifier the project's interface: ``forward(x, return_feats)``, ``num_classes``, ``embed_dim``."""

    def __init__(self, name: str, num_classes: int, **kwargs: Any) -> None:
        super().__init__()
        import timm

        # Pretrained weights are outside data under the HW2P2 rules, so they are never fetched.
        self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        self.num_classes = num_classes
        self.embed_dim = self.model.num_features

    def forward(self, x: torch.Tensor, return_feats: bool = False) -> torch.Tensor:
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return feats if return_feats else self.model.get_classifier()(feats)


def model_names() -> list[str]:
    return [*sorted(VARIANTS), TIMM_PREFIX + "<any timm model>"]


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Return the model ``name`` (a key of ``VARIANTS`` or ``timm:<timm name>``) with ``num_classes`` outputs.

    Keyword arguments override the variant's architecture (``dims``, ``depths``, ...) or set training options
    (``drop_path_rate``, ``embed_dim``, ``init_std``); ``None`` values are ignored.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith(TIMM_PREFIX):
        kwargs.pop("embed_dim", None)
        kwargs.pop("init_std", None)
        kwargs.pop("cosine_scale", None)
        if kwargs.pop("classifier", "linear") != "linear":
            raise ValueError("the cosine classifier (margin losses) is built for FaceNext's ConvNeXt variants only")
        if kwargs.pop("neck", "none") != "none":
            raise ValueError("model.neck is built for FaceNext's ConvNeXt variants only: set model.neck=none")
        return TimmFaceModel(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(model_names())}")
    spec = {f.name: getattr(VARIANTS[name], f.name) for f in dataclasses.fields(VARIANTS[name]) if f.name != "extra"}
    spec.update(kwargs)
    return ConvNeXt(num_classes=num_classes, **spec)


def embedding_size(config: Config) -> int | None:
    """The embedding dimension ``config.model`` gives, without building it; None for timm models."""
    m = config.model
    if m.name.startswith(TIMM_PREFIX) or m.name not in VARIANTS:
        return None
    return m.embed_dim or (m.dims[-1] if m.dims else VARIANTS[m.name].dims[-1])


def model_from_config(config: Config, num_classes: int) -> nn.Module:
    """The model ``config.model`` describes, with ``num_classes`` outputs; a bad architecture is a UserError.

    Nulls (classifier, cosine scale) take the values a run with this config trains with (``resolve_config``)."""
    from ..losses import resolve_config

    m = resolve_config(config, num_classes, embedding_size(config), strict=False).model
    try:
        return create_model(
            m.name,
            num_classes=num_classes,
            dims=tuple(m.dims) if m.dims else None,
            depths=tuple(m.depths) if m.depths else None,
            drop_path_rate=m.drop_path_rate,
            drop_rate=m.drop_rate,
            embed_dim=m.embed_dim,
            init_std=m.init_std,
            classifier=m.classifier if m.classifier != "linear" else None,
            cosine_scale=m.cosine_scale if m.classifier != "linear" else None,
            neck=m.neck if m.neck != "none" else None,
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"cannot build model {m.name!r}: {e}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
