"""Models: a backbone (the ConvNeXt family or any timm model) plus the face head, and a factory for both."""

from .convnext import VARIANTS, ConvNeXt, fuse_batchnorm, load_timm_state_dict
from .factory import (
    TimmFaceModel,
    count_parameters,
    create_model,
    current_weights,
    embedding_size,
    model_from_config,
)
from .head import FaceHead, FaceModel

__all__ = [
    "VARIANTS",
    "ConvNeXt",
    "FaceHead",
    "FaceModel",
    "TimmFaceModel",
    "count_parameters",
    "create_model",
    "current_weights",
    "embedding_size",
    "fuse_batchnorm",
    "load_timm_state_dict",
    "model_from_config",
]
