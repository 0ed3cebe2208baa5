"""Checkpoints: written atomically (through ``facenext.io``) and loaded without running pickled code.

Outside ``engine/`` so that loading a model for inference never imports the training loop.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .io import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    # Serialise in memory first: Python then reports a full disk as OSError (torch's own writer hides the errno).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()), keep_previous)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never code. ``mmap``: tensors are mapped
    from the file, read only when used (a cheap look at the other entries)."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train the run first (`facenext train CONFIG`)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols before refusing them
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for truncated, foreign or malicious files
        raise UserError(
            f"{path} is not a FaceNext checkpoint or is damaged ({type(e).__name__}): retrain or restore it"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a FaceNext checkpoint: it has no model weights")
    return state
