"""Build any model the configs name: this project's ConvNeXt variants or any timm backbone."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import UserError
from .convnext import VARIANTS, ConvNeXt
from .head import FaceHead, FaceModel, init_linear

if TYPE_CHECKING:
    from ..config import Config

TIMM_PREFIX = "timm:"


class TimmFaceModel(FaceModel):
    """A timm model as the backbone of the face head: timm's pooled features (``forward_head(pre_logits=True)``, so
    each model pools as it was designed to, tokens included) go through ``FaceHead``, which gives the embedding (BN
    neck, projection) and the classifier (linear, or cosine for ArcFace and CosFace).

    Runs written before the head was apart wrapped the whole timm classifier as ``model``: their weights load through
    ``_legacy_keys`` (``model.<timm's classifier>.*`` is now ``head.fc.*``, every other ``model.*`` ``backbone.*``).
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        embed_dim: int | None = None,
        drop_rate: float = 0.0,
        classifier: str = "linear",
        cosine_scale: float = 30.0,
        neck: str = "none",
        init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        # Pretrained weights are outside data under the HW2P2 rules, so they are never fetched. Dropout is the head's.
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        self.num_classes = num_classes
        self.head = FaceHead(
            timm_feature_size(self.backbone), num_classes, None, embed_dim, drop_rate, classifier, cosine_scale, neck
        )
        self.head.apply(lambda module: init_linear(module, init_std))
        self.register_load_state_dict_pre_hook(_legacy_keys)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's pooled features: the head's input."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def no_weight_decay(self) -> set[str]:
        """What timm's model keeps from weight decay (position embeddings, class tokens), as timm's optimizers do."""
        skip = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else ()
        return {f"backbone.{name}" for name in skip}

    def legacy_classifier(self) -> str | None:
        """Where timm's own classifier sat (``fc``, ``head.fc``, ...), which runs before the face head trained."""
        name = self.backbone.pretrained_cfg.get("classifier")
        return name if isinstance(name, str) else None


def _legacy_keys(module: TimmFaceModel, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
    """Rename, in place, the keys of a state dict written by the timm wrapper before the face head was apart."""
    old = prefix + "model."
    if not any(key.startswith(old) for key in state_dict):
        return
    classifier = f"{old}{module.legacy_classifier()}." if module.legacy_classifier() else None
    for key in [key for key in state_dict if key.startswith(old)]:
        if classifier and key.startswith(classifier):
            state_dict[f"{prefix}head.fc.{key[len(classifier) :]}"] = state_dict.pop(key)
        else:
            state_dict[f"{prefix}backbone.{key[len(old) :]}"] = state_dict.pop(key)


def current_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` under the names ``model`` has today: weights a timm run saved before the face head was apart
    renamed, for code that matches names itself (``train.init_from``, ``facenext average``) rather than loading."""
    state = dict(state)
    if isinstance(model, TimmFaceModel):
        _legacy_keys(model, state, "")
    return state


def timm_feature_size(backbone: nn.Module) -> int:
    """The size of timm's pooled features (``forward_head(pre_logits=True)``)."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def model_names() -> list[str]:
    return [*sorted(VARIANTS), TIMM_PREFIX + "<any timm model>"]


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Return the model ``name`` (a key of ``VARIANTS`` or ``timm:<timm name>``) with ``num_classes`` outputs.

    Keyword arguments override the variant's architecture (``dims``, ``depths``, ...) or set training options
    (``drop_path_rate``, ``embed_dim``, ``init_std``) and the face head (``embed_dim``, ``neck``, ``classifier``,
    ``cosine_scale``, ``drop_rate``), for timm models too (``pool`` and ``image_size`` for ours only); the rest goes to
    ``timm.create_model``. ``None`` values are ignored.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith(TIMM_PREFIX):
        if kwargs.pop("pool", "avg") != "avg":
            raise ValueError("pool gdc weighs the positions of this project's ConvNeXt maps: timm models pool alone")
        kwargs.pop("image_size", None)
        return TimmFaceModel(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(model_names())}")
    spec = {f.name: getattr(VARIANTS[name], f.name) for f in dataclasses.fields(VARIANTS[name]) if f.name != "extra"}
    spec.update(kwargs)
    return ConvNeXt(num_classes=num_classes, **spec)


def embedding_size(config: Config) -> int | None:
    """The embedding dimension ``config.model`` gives; a timm model is built on the meta device (no memory, no
    weights) to read its feature size. None when the model cannot be built."""
    m = config.model
    if m.embed_dim:
        return m.embed_dim
    if m.name.startswith(TIMM_PREFIX):
        dims, depths = tuple(m.dims) if m.dims else None, tuple(m.depths) if m.depths else None
        try:
            with torch.device("meta"):
                return create_model(m.name, num_classes=0, dims=dims, depths=depths).embed_dim
        except (RuntimeError, ValueError, TypeError):  # unknown, or not buildable on meta: model_from_config says why
            return None
    if m.name not in VARIANTS:
        return None
    return m.dims[-1] if m.dims else VARIANTS[m.name].dims[-1]


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
            pool=m.pool if m.pool != "avg" else None,
            image_size=config.data.image_size if m.pool != "avg" else None,  # GDC's grid is the last map at this size
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"cannot build model {m.name!r}: {e}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
