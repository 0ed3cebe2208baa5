"""An optional decoded cache: every image of a split decoded once, at the training size, into a uint8 array on disk.

Decoding JPEGs dominates data loading on machines with few CPU cores (Kaggle's notebooks have 4); with
``data.cache=true`` each split is decoded once into ``<cache_dir>/<key>.npy`` (N x size x size x 3, uint8) and
memory-mapped by every DataLoader worker, so later epochs only augment. Images are stored exactly as the
uncached pipeline would see them after its first resize (draft decoding, then INTER_AREA to size x size), so
training with and without the cache gives the same samples.

The array is written to a temporary file and renamed, then a JSON index (paths, sizes and modification times of
the sources, and which could not be decoded) is written the same way; a cache whose index is missing or does
not match the files on disk is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..io import atomic_write, write_json
from .datasets import DECODE_ERRORS, FaceImages, load_rgb

logger = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_DIR = "~/.cache/facenext"


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACENEXT_CACHE_DIR", DEFAULT_DIR)).expanduser()


def decode_fixed(path: Path, size: int) -> np.ndarray:
    """The image as the training pipeline's first step sees it: draft decoding, then INTER_AREA to size x size."""
    image = load_rgb(path, size)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _sources(paths: list[Path]) -> list[list[int]]:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append([st.st_size, st.st_mtime_ns])
    return out


class DecodedCache:
    """A split's decoded images, memory-mapped on first use (in each worker process, never pickled)."""

    def __init__(self, array_path: Path, bad: list[int]) -> None:
        self.array_path = Path(array_path)
        self.bad = set(bad)
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def get(self, index: int) -> np.ndarray | None:
        """The decoded image, or None when the source could not be decoded when the cache was built."""
        if index in self.bad:
            return None
        return np.array(self.array[index])  # a private copy: transforms may write into it


def build_cache(
    paths: list[Path], size: int, cache_dir: str | Path | None = None, threads: int | None = None
) -> DecodedCache:
    """The decoded cache of ``paths`` at ``size``: reused when its index matches the files, else (re)built."""
    paths = [Path(p) for p in paths]
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    common = os.path.commonpath([str(p.resolve()) for p in paths]) if paths else ""
    key = hashlib.sha1(f"{common}|{size}|{len(paths)}".encode()).hexdigest()[:16]
    array_path, index_path = folder / f"{key}.npy", folder / f"{key}.json"
    index = {"format": FORMAT, "size": size, "paths": [str(p) for p in paths], "sources": _sources(paths)}
    if index_path.is_file() and array_path.is_file():
        try:
            stored = json.loads(index_path.read_text())
        except (OSError, ValueError):
            stored = {}
        if {k: stored.get(k) for k in index} == index:
            return DecodedCache(array_path, stored.get("bad", []))

    logger.info(f"facenext: decoding {len(paths)} images into the cache {array_path} ({size} px)")
    bad: list[int] = []

    def write_array(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))

        def one(i: int) -> None:
            try:
                array[i] = decode_fixed(paths[i], size)
            except DECODE_ERRORS as e:
                bad.append(i)
                logger.warning(f"facenext: warning: unreadable image {paths[i]} ({e})")

        # PIL decoding and OpenCV resizing release the GIL: threads use every core without copying the array.
        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            list(pool.map(one, range(len(paths)), chunksize=64))
        array.flush()

    atomic_write(array_path, write_array)
    index["bad"] = sorted(bad)
    write_json(index_path, index, indent=None)
    return DecodedCache(array_path, index["bad"])


def attach_cache(dataset: FaceImages, cache_dir: str | Path | None = None) -> DecodedCache:
    """Give ``dataset`` a decoded cache at its size; its images then come from the memory map."""
    dataset.cache = build_cache(dataset.paths, dataset.size, cache_dir)
    return dataset.cache
