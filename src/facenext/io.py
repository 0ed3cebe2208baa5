"""Every file FaceNext writes goes through ``atomic_write``: complete, on disk and valid before it takes its name.

Readers therefore never see a half-written file, and a failed or interrupted write (a crash, a full disk, a file
that fails its check) leaves the previous file under the name intact. JSON and CSV helpers sit on top.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def previous_path(path: Path) -> Path:
    """Where ``atomic_write(..., keep_previous=True)`` keeps the file it replaced."""
    return path.with_name(path.name + ".prev")


def atomic_write(
    path: str | Path,
    write: Callable[[Path], object],
    keep_previous: bool = False,
    validate: Callable[[Path], object] | None = None,
) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is flushed to disk before the rename, so a power cut cannot leave an empty file under the
    name. ``validate(tmp)`` runs on the complete file first: when it raises, nothing is renamed. With
    ``keep_previous`` the file being replaced stays as ``<name>.prev``, a fallback if the new one is ever found
    damaged. A full disk becomes a UserError. On any failure the temporary file is removed and ``path`` keeps its
    previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The ".<name>.*.tmp" pattern is what a resumed run sweeps up after a process killed mid-write.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if validate is not None:
            validate(tmp)
        if keep_previous and path.exists():
            link = Path(f"{tmp}.prev")
            os.link(path, link)  # a second name for the old file, then an atomic rename: no moment without one
            os.replace(link, previous_path(path))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in DISK_FULL:
            raise UserError(
                f"disk full while writing {path} ({e.strerror}): free some space and re-run; "
                f"the previous {path.name} is intact"
            ) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; some filesystems cannot sync a folder, which costs nothing but durability."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_npz(path: str | Path, arrays: Mapping[str, Any]) -> None:
    """Named arrays as an uncompressed ``.npz`` at ``path``, written atomically."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    atomic_write(path, write)


def write_bytes(path: str | Path, data: bytes | memoryview, keep_previous: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), keep_previous)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """``data`` as JSON with a final newline; ``indent=None`` for one compact line (long lists)."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a missing or damaged file is a UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}): restore or rewrite it") from None


def write_csv(
    path: str | Path,
    data: Any,
    columns: Sequence[str] | None = None,
    validate: Callable[[Path], object] | None = None,
) -> None:
    """Write a pandas DataFrame (no index column) or rows of dicts (``columns`` names them, in order) as CSV.

    ``validate`` checks the complete temporary file before it takes the name (see ``atomic_write``).
    """
    if hasattr(data, "to_csv"):

        def write(tmp: Path) -> None:
            data.to_csv(tmp, index=False)

    else:
        rows: Iterable[Mapping[str, Any]] = data
        if columns is None:
            raise ValueError("write_csv needs the column names for rows of dicts")

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(columns))
                writer.writeheader()
                writer.writerows(rows)

    atomic_write(path, write, validate=validate)
