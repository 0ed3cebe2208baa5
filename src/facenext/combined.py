"""The combined task (F26): one submission from a run's test classification and its test pair scores.

``predict`` saves ``test_logits.npz`` and ``verify`` saves ``pair_scores.npz`` in the same folder; whichever runs
second writes ``submission.csv`` with both parts, in the format ``submission.submission_format`` decides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.layout import Layout
from .io import write_json, write_npz
from .limits import runs_record
from .submission import classification_ids, submission_record, write_combined

PAIR_SCORES = "pair_scores.npz"


def save_pair_scores(
    out: Path, val_scores: np.ndarray, val_labels: np.ndarray, test_scores: np.ndarray | None, scoring: str
) -> None:
    """Dev (val_pairs) scores with their labels, and test pair scores: all an ensemble needs. ``scoring`` says how
    they were scored (plain cosine, expanded, re-ranked): scores of different kinds are not averaged."""
    arrays = {
        "val_scores": np.asarray(val_scores, np.float32),
        "val_labels": np.asarray(val_labels, np.int64),
        "scoring": np.array(scoring),
    }
    if test_scores is not None:
        arrays["test_scores"] = np.asarray(test_scores, np.float32)
    write_npz(out / PAIR_SCORES, arrays)


def load_pair_scores(folder: Path) -> dict[str, np.ndarray] | None:
    path = Path(folder) / PAIR_SCORES
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_run_submission(out: Path, layout: Layout, fmt: str | None, num_classes: int, run: Path) -> Path | None:
    """``out/submission.csv`` with both parts once ``out`` holds the run's test logits and test pair scores.

    ``out/submission.json`` records the run and the format, for ``check-submission`` and ``submit``.
    """
    logits_path, scores = out / "test_logits.npz", load_pair_scores(out)
    if not logits_path.is_file() or scores is None or "test_scores" not in scores:
        missing = "`facenext verify RUN`" if logits_path.is_file() else "`facenext predict RUN`"
        print(f"the combined submission needs both parts: run {missing} to write it")
        return None
    with np.load(logits_path, allow_pickle=False) as data:
        ids, logits = data["ids"].tolist(), data["logits"]
    expected, _ = classification_ids(layout)
    if ids != expected:  # logits from another data folder: the labels would land on other images
        print(f"{logits_path} is not for the test images under {layout.root}: run `facenext predict RUN` again")
        return None
    path = out / "submission.csv"
    chosen = write_combined(path, layout, logits.argmax(1), scores["test_scores"], fmt, num_classes)
    write_json(path.with_suffix(".json"), {**runs_record([run]), "format": chosen.name, "term": layout.term.key})
    print(f"wrote {path} ({len(ids)} test images + {len(scores['test_scores'])} test pairs, format {chosen.name})")
    return path


def recorded_format(file: str | Path) -> str | None:
    """The format that ``ensemble``/``predict``/``verify`` recorded beside a combined submission (``<file>.json``)."""
    value = submission_record(file).get("format")
    return str(value) if value else None
