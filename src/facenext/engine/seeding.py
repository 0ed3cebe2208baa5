"""Seeding: every process's random number generators, and the deterministic mode ``train.deterministic`` asks for."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import UserError

# The cuBLAS workspace settings torch accepts as deterministic (at::Context::checkCuBLASConfigDeterministic).
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")


def deterministic_cublas() -> None:
    """Deterministic matrix products on CUDA need ``CUBLAS_WORKSPACE_CONFIG`` set before the first cuBLAS handle is
    made; without it torch (warn_only) only warns, and results vary from run to run. Set it when absent; refuse a
    value that would undo ``train.deterministic`` (on any device, so a config behaves alike on every machine)."""
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    elif value not in CUBLAS_DETERMINISTIC:
        raise UserError(
            f"train.deterministic needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_DETERMINISTIC[0]} (or "
            f"{CUBLAS_DETERMINISTIC[1]}) for deterministic CUDA matrix products, but it is {value!r}: unset it "
            f"(facenext then sets {CUBLAS_DETERMINISTIC[0]}) or set it to {CUBLAS_DETERMINISTIC[0]}"
        )


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        deterministic_cublas()  # the Trainer seeds before anything touches CUDA
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
