"""Checkpoints and other run files, written atomically and loaded without running pickled code."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def atomic_write(path: Path, write: Any, keep_previous: bool = False) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``: a crash never leaves a half-written file there.

    With ``keep_previous`` the file being replaced stays as ``<name>.prev``, a fallback if the new one is ever
    found damaged. A full disk becomes a UserError, and ``path`` keeps its previous content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:  # on disk before the rename, so a power cut cannot leave an empty file
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            link = f"{tmp}.prev"
            os.link(path, link)  # a second name for the old file, then an atomic rename: no moment without one
            os.replace(link, previous_path(path))
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in DISK_FULL:
            raise UserError(
                f"disk full while writing {path} ({e.strerror}): free some space and re-run; "
                f"the previous {path.name} is intact"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    # Serialise in memory first: Python then reports a full disk as OSError (torch's own writer hides the errno).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()), keep_previous)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never code."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train the run first (`facenext train CONFIG`)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols before refusing them
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or malicious files
        raise UserError(
            f"{path} is not a FaceNext checkpoint or is damaged ({type(e).__name__}): retrain or restore it"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a FaceNext checkpoint: it has no model weights")
    return state
