"""Models: the ConvNeXt family and a factory that also builds timm backbones."""

from .convnext import VARIANTS, ConvNeXt, fuse_batchnorm, load_timm_state_dict
from .factory import count_parameters, create_model, embedding_size, model_from_config

__all__ = [
    "VARIANTS",
    "ConvNeXt",
    "count_parameters",
    "create_model",
    "embedding_size",
    "fuse_batchnorm",
    "load_timm_state_dict",
    "model_from_config",
]
