"""Classify the dev or test images with a trained run: logits on disk (for ensembles) and a submission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data.datasets import image_folder
from .data.layout import find_layout
from .engine.checkpoint import atomic_write, write_json
from .inference import load_run, run_model
from .submission import check_classification_submission, classification_ids, write_submission


def save_logits(path: Path, logits: np.ndarray, ids: list[str], classes: list[str], labels: np.ndarray | None) -> None:
    """float16 logits with their ids and class list: all an ensemble needs, without re-running a model."""
    arrays = {"logits": logits.astype(np.float16), "ids": np.array(ids), "classes": np.array(classes)}
    if labels is not None:
        arrays["labels"] = labels

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def predict(
    run_dir: str | Path,
    split: str = "test",
    tta: str | None = None,
    out_dir: str | Path | None = None,
    weights: str = "best",
    data_root: str | None = None,
) -> dict[str, Any]:
    """Write ``<split>_logits.npz`` and, for the test split, ``submission.csv`` into ``out_dir``."""
    run = load_run(run_dir, weights)
    tta = tta or run.config.predict.tta
    out = Path(out_dir) if out_dir else Path("submissions") / run.name
    layout = find_layout(data_root or run.config.data.root, run.config.data.term)
    summary: dict[str, Any] = {"run": str(run.path), "split": split, "tta": tta, "weights": weights}
    if split == "dev":
        paths, labels = image_folder(layout.dev, run.classes)
        ids = [str(p.relative_to(layout.dev)) for p in paths]
    else:
        ids, files = classification_ids(layout)
        paths, labels = [layout.test / f for f in files], None
    logits = run_model(run, paths, tta, run.config.predict.batch_size, return_feats=False)
    save_logits(out / f"{split}_logits.npz", logits, ids, run.classes, None if labels is None else np.array(labels))
    predictions = logits.argmax(1)
    if labels is not None:
        summary["dev_acc"] = float((predictions == np.array(labels)).mean())
        print(f"{run.name}: dev accuracy {summary['dev_acc']:.4f} ({len(labels)} images, tta {tta})")
    else:
        submission = out / "submission.csv"
        write_submission(submission, {"id": ids, "label": predictions})
        check_classification_submission(submission, layout, len(run.classes))
        summary["submission"] = str(submission)
        print(f"{run.name}: wrote {submission} ({len(ids)} rows, tta {tta})")
    summary["images"] = len(paths)
    write_json(out / f"predict_{split}.json", summary)
    return summary
