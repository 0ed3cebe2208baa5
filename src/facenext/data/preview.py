"""`facenext preview CONFIG`: a PNG grid of augmented training images beside their originals.

Each cell pair shows a training image as the model would see it without augmentation (resized to the training
size) and, to its right, the same image through the config's training augmentation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import Config
from ..errors import UserError
from ..io import atomic_write
from .datasets import FaceImages, image_folder, load_rgb
from .layout import find_layout, list_classes
from .transforms import data_train_transform, eval_transform

logger = logging.getLogger(__name__)

PAIRS_PER_ROW = 4


def preview_grid(config: Config, n: int = 16) -> np.ndarray:
    """``ceil(n / 4)`` rows of up to 4 (original, augmented) pairs, each image ``image_size`` pixels square."""
    if n < 1:
        raise UserError("--n must be at least 1")
    d, size = config.data, config.data.image_size
    layout = find_layout(d.root, d.term)
    paths, labels = image_folder(layout.train, list_classes(layout.train))
    try:
        augmented = FaceImages(paths, labels, data_train_transform(d), size)
    except ValueError as e:
        raise UserError(f"{e} (data.augment)") from None
    plain = eval_transform(size)
    picks = np.random.default_rng(config.train.seed).permutation(len(paths))[:n]
    per_row = min(len(picks), PAIRS_PER_ROW)
    rows = -(-len(picks) // per_row)
    grid = np.full((rows * size, per_row * 2 * size, 3), 255, np.uint8)
    for k, i in enumerate(picks):
        r, c = divmod(k, per_row)
        original = plain(image=load_rgb(paths[i], size))["image"]
        image, _ = augmented[(config.train.seed, 0, int(i))]
        y, x = r * size, c * 2 * size
        grid[y : y + size, x : x + size] = original
        grid[y : y + size, x + size : x + 2 * size] = image.numpy()
    return grid


def write_preview(config: Config, out: str | Path, n: int = 16) -> Path:
    out = Path(out)
    # The temporary file's name says nothing about the format: take it from the final name, as PIL would.
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None:
        raise UserError(f"--out {out}: unknown image type {out.suffix!r}, use .png or .jpg")
    grid = preview_grid(config, n)
    atomic_write(out, lambda tmp: Image.fromarray(grid).save(tmp, format=image_format))
    logger.info(f"wrote {out}: {grid.shape[1]}x{grid.shape[0]} px, each original on the left of its augmented version")
    return out
