"""Classify the dev or test images with a trained run: logits on disk (for ensembles) and a submission."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .combined import WEIGHTS_KEY, format_setting, weights_id, write_run_submission
from .data.datasets import image_folder
from .data.layout import Layout, find_layout, list_classes
from .errors import UserError
from .inference import infer, load_run
from .io import atomic_write, write_json
from .limits import runs_record
from .submission import classification_ids, scored_kinds, write_submission

logger = logging.getLogger(__name__)


def save_logits(
    path: Path,
    logits: np.ndarray,
    ids: list[str],
    classes: list[str],
    labels: np.ndarray | None,
    weights: str | None = None,
) -> None:
    """float16 logits with their ids and class list: all an ensemble needs, without re-running a model.

    A plain ``.npz`` (``np.load`` reads it) written with fixed zip timestamps, so equal arrays give equal bytes.
    ``weights``: the ``combined.weights_id`` of the model, so that F26's two parts are checked to be one model's.
    """
    arrays = {"logits": logits.astype(np.float16), "ids": np.array(ids), "classes": np.array(classes)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if weights is not None:
        arrays[WEIGHTS_KEY] = np.array(weights)

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for key, value in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())

    atomic_write(path, write)


def check_classes(run_classes: list[str], layout: Layout, run_dir: Path) -> None:
    """Refuse data whose train identities differ from the run's classes.json: the indices would mean other people."""
    data_classes = list_classes(layout.train)
    if data_classes == run_classes:
        return
    run_set, data_set = set(run_classes), set(data_classes)
    missing = [c for c in run_classes if c not in data_set]
    extra = [c for c in data_classes if c not in run_set]
    if missing or extra:
        parts = [
            f"{len(missing)} of its classes are not in {layout.train}" + (f" (e.g. {missing[0]})" if missing else "")
        ]
        parts.append(f"{len(extra)} identities there are not in the run" + (f" (e.g. {extra[0]})" if extra else ""))
        detail = "; ".join(parts)
    else:
        i = next(i for i, (a, b) in enumerate(zip(run_classes, data_classes, strict=True)) if a != b)
        detail = f"same identities in another order (index {i}: {run_classes[i]} vs {data_classes[i]})"
    raise UserError(
        f"{run_dir}/classes.json does not match the data: {detail}; use the data the run was trained on (--data)"
    )


def fill_failed(logits: np.ndarray, failed: list[int]) -> np.ndarray:
    """Rows of unreadable images get the log-frequency of the other rows' predictions: argmax = most common class."""
    logits = logits.copy()
    good = np.ones(len(logits), dtype=bool)
    good[failed] = False
    counts = np.bincount(logits[good].argmax(1), minlength=logits.shape[1]) if good.any() else np.zeros(logits.shape[1])
    logits[failed] = np.log((counts + 1) / (counts.sum() + logits.shape[1]))
    return logits


def predict(
    run_dir: str | Path,
    split: str = "test",
    tta: str | None = None,
    out_dir: str | Path | None = None,
    weights: str = "best",
    data_root: str | None = None,
    merge: str = "prob",
    fill: bool = False,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Write ``<split>_logits.npz`` and ``predict_<split>.json``; for the test split also ``submission.csv``.

    ``tta`` is a spec of ``facenext.inference.parse_tta`` (default: the run's ``predict.tta``); the views are
    merged by ``merge`` (``prob``, ``logit`` or ``geo``). With ``fill`` an unreadable test image gets the most
    common prediction instead of failing. For the combined task (F26) the submission, in the format ``fmt``
    (default: the sample submission or predict.submission_format), is written once ``verify`` has saved the pair
    scores in the same folder.
    """
    run = load_run(run_dir, weights)
    tta = tta or run.config.predict.tta
    out = Path(out_dir) if out_dir else Path("submissions") / run.name
    layout = find_layout(data_root or run.config.data.root, run.config.data.term)
    check_classes(run.classes, layout, run.path)
    summary: dict[str, Any] = {"run": str(run.path), "split": split, "tta": tta, "merge": merge, "weights": weights}
    if split == "dev":
        if layout.dev is None:
            raise UserError(f"the competition under {layout.root} has no dev split")
        paths, labels = image_folder(layout.dev, run.classes)
        ids = [p.relative_to(layout.dev).as_posix() for p in paths]
    elif split == "test":
        ids, files = classification_ids(layout)
        paths, labels = [layout.test / f for f in files], None
    else:
        raise UserError(f"unknown split {split!r}: use dev or test")
    advice = "replace the file, or predict with --fill (the most common prediction stands in for it)"
    result = infer(run, paths, tta, run.config.predict.batch_size, merge=merge, fill=fill, advice=advice)
    logits = result.merged
    if result.failed:
        logits = fill_failed(logits, result.failed)
        summary["filled"] = [ids[i] for i in result.failed]
        logger.warning(
            f"warning: {len(result.failed)} unreadable image(s) got the most common prediction: {ids[result.failed[0]]}"
        )
    save_logits(
        out / f"{split}_logits.npz",
        logits,
        ids,
        run.classes,
        None if labels is None else np.array(labels),
        weights_id(run.path, weights),
    )
    predictions = logits.argmax(1)
    if labels is not None:
        truth = np.array(labels)
        summary["dev_acc"] = float((predictions == truth).mean())
        summary["view_acc"] = {
            name: float((view == truth).mean())
            for name, view in zip(result.view_names, result.view_predictions, strict=True)
        }
        views = ", ".join(f"{k} {v:.4f}" for k, v in summary["view_acc"].items())
        logger.info(
            f"{run.name}: dev accuracy {summary['dev_acc']:.4f} ({len(truth)} images, tta {tta}, {merge}); "
            f"per view: {views}"
        )
    elif layout.family.one_file:  # F26: one file with both parts, once verify has scored the pairs
        fmt, source = format_setting(fmt, run.config.predict.submission_format, run.folder.config_file)
        combined = write_run_submission(out, layout, fmt, len(run.classes), run.path, "predict", source)
        if combined is not None:
            summary["submission"] = str(combined)
    elif "classification" not in scored_kinds(layout):  # S25, F25, S26: a class file would not be scored
        logger.info(
            f"{run.name}: saved the test logits; the {layout.term.key.upper()} competition ranks only the test pairs' "
            "scores: `facenext verify RUN` writes its submission"
        )
    else:
        submission = out / "submission.csv"
        write_submission(
            submission,
            {"id": ids, "label": predictions},
            layout=layout,
            kind="classification",
            num_classes=len(run.classes),
        )
        write_json(submission.with_suffix(".json"), {**runs_record([run.path]), "term": layout.term.key})
        summary["submission"] = str(submission)
        logger.info(f"{run.name}: wrote {submission} ({len(ids)} rows, tta {tta}, {merge})")
    summary["images"] = len(paths)
    write_json(out / f"predict_{split}.json", summary)
    return summary
