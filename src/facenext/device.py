"""Pick the device and the mixed-precision mode; passed explicitly to every stage."""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError

# bf16 arithmetic needs Ampere tensor cores (compute capability 8.0). Older cards (P100 6.0, V100 7.0, T4 7.5)
# only emulate it, which torch's ``is_bf16_supported()`` counts as support: they get fp16 with loss scaling.
NATIVE_BF16_CAPABILITY = (8, 0)
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec} asked for, but this machine has no usable CUDA GPU: use train.device=auto")
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on cards with native bf16, fp16 (with a GradScaler) on older CUDA
    cards, None (full precision) when disabled or off CUDA."""
    if not enabled or device.type != "cuda":
        return None
    native_bf16 = torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
    return torch.bfloat16 if native_bf16 else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    return PRECISION_NAMES[dtype]


def describe_device(device: torch.device) -> str:
    """``cuda:0 (Tesla T4, compute 7.5)``, or the device itself off CUDA."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return f"cuda:{index} ({torch.cuda.get_device_name(device)}, compute {major}.{minor})"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
