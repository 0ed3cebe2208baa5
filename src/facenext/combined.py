"""The combined task (F26): one submission from a run's test classification and its test pair scores.

``predict`` saves ``test_logits.npz`` and ``verify`` saves ``pair_scores.npz`` in the same folder; whichever runs
second writes ``submission.csv`` with both parts, in the format ``submission.submission_format`` decides. Both
parts record the weights they come from (``weights_id``): parts of two different models (``verify`` run again after
more training, ``predict`` with other ``--weights``) are refused, naming the command that makes them one model's.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from .data.layout import Layout
from .errors import UserError
from .io import write_json, write_npz
from .limits import runs_record
from .run import RunDir
from .submission import classification_ids, submission_record, write_combined

logger = logging.getLogger(__name__)

PAIR_SCORES = "pair_scores.npz"
WEIGHTS_KEY = "weights"  # in test_logits.npz and pair_scores.npz: the weights_id of the model behind them


def format_setting(flag: str | None, configured: str | None, config_file: Path) -> tuple[str | None, str | None]:
    """The combined format asked for, and where (for messages): ``--format``, else the run's config."""
    if flag:
        return flag, f"--format {flag}"
    if configured:
        return configured, f"predict.submission_format: {configured} in {config_file}"
    return None, None


def weights_id(run: Path, weights: str) -> str | None:
    """``<weights>:<sha256 of the checkpoint file>`` (16 hex digits): which weights of a run made an output. The
    content, not the file's time: retraining that rewrites ``best.pt`` with the same weights changes nothing.
    None when the file is gone."""
    path = RunDir(run).weights_file(weights)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{weights}:{digest.hexdigest()[:16]}"


def recorded_weights(part: dict[str, np.ndarray]) -> str | None:
    """The ``weights_id`` an output recorded (None: written before FaceNext recorded it)."""
    return str(np.asarray(part[WEIGHTS_KEY]).ravel()[0]) if WEIGHTS_KEY in part else None  # 0-d or one item


def check_same_weights(
    folder: Path, run: Path, logits: dict[str, np.ndarray], scores: dict[str, np.ndarray], fresh: str | None = None
) -> None:
    """Refuse test logits and pair scores that come from different weights of ``run``, naming the command that
    fixes it: the part that is not from the run's current weights (``fresh``: the part just written) is redone."""
    a, b = recorded_weights(logits), recorded_weights(scores)
    if a is not None and a == b:
        return
    stale = [cmd for cmd, rec in (("predict", a), ("verify", b)) if cmd != fresh and not _current(run, rec)]
    if fresh is not None and not stale:
        stale = ["verify" if fresh == "predict" else "predict"]
    keep = b if stale == ["predict"] else a
    weights = keep.split(":")[0] if keep else "best"
    option = "" if weights == "best" else f" --weights {weights}"
    redo = stale or ["predict", "verify"]
    commands = " and ".join(f"`facenext {cmd} {run}{option} --out {folder}`" for cmd in redo)
    raise UserError(
        f"{folder}: test_logits.npz ({a or 'weights not recorded'}) and {PAIR_SCORES} ({b or 'weights not recorded'}) "
        f"come from different weights of {run}: run {commands}, so that both parts of the submission are one model's"
    )


def _current(run: Path, recorded: str | None) -> bool:
    return recorded is not None and weights_id(run, recorded.split(":")[0]) == recorded


def save_pair_scores(
    out: Path,
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    test_scores: np.ndarray | None,
    scoring: str,
    weights: str | None = None,
) -> None:
    """Dev (val_pairs) scores with their labels, and test pair scores: all an ensemble needs. ``scoring`` says how
    they were scored (plain cosine, expanded, re-ranked): scores of different kinds are not averaged. ``weights``:
    the ``weights_id`` of the model that scored them."""
    arrays = {
        "val_scores": np.asarray(val_scores, np.float32),
        "val_labels": np.asarray(val_labels, np.int64),
        "scoring": np.array(scoring),
    }
    if test_scores is not None:
        arrays["test_scores"] = np.asarray(test_scores, np.float32)
    if weights is not None:
        arrays[WEIGHTS_KEY] = np.array(weights)
    write_npz(out / PAIR_SCORES, arrays)


def load_pair_scores(folder: Path) -> dict[str, np.ndarray] | None:
    path = Path(folder) / PAIR_SCORES
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_run_submission(
    out: Path,
    layout: Layout,
    fmt: str | None,
    num_classes: int,
    run: Path,
    fresh: str | None = None,
    fmt_source: str | None = None,
) -> Path | None:
    """``out/submission.csv`` with both parts once ``out`` holds the run's test logits and test pair scores, from
    the same weights (``fresh``: ``predict`` or ``verify``, the part just written).

    ``out/submission.json`` records the run and the format, for ``check-submission`` and ``submit``.
    """
    logits_path, scores = out / "test_logits.npz", load_pair_scores(out)
    if not logits_path.is_file() or scores is None or "test_scores" not in scores:
        missing = "`facenext verify RUN`" if logits_path.is_file() else "`facenext predict RUN`"
        logger.info(f"the combined submission needs both parts: run {missing} to write it")
        return None
    with np.load(logits_path, allow_pickle=False) as data:
        logits_part = {k: data[k] for k in data.files}
    ids, logits = logits_part["ids"].tolist(), logits_part["logits"]
    expected, _ = classification_ids(layout)
    if ids != expected:  # logits from another data folder: the labels would land on other images
        logger.info(f"{logits_path} is not for the test images under {layout.root}: run `facenext predict RUN` again")
        return None
    check_same_weights(out, run, logits_part, scores, fresh)
    path = out / "submission.csv"
    chosen = write_combined(path, layout, logits.argmax(1), scores["test_scores"], fmt, num_classes, fmt_source)
    write_json(path.with_suffix(".json"), {**runs_record([run]), "format": chosen.name, "term": layout.term.key})
    logger.info(
        f"wrote {path} ({len(ids)} test images + {len(scores['test_scores'])} test pairs, format {chosen.name})"
    )
    return path


def recorded_format(file: str | Path) -> str | None:
    """The format that ``ensemble``/``predict``/``verify`` recorded beside a combined submission (``<file>.json``)."""
    value = submission_record(file).get("format")
    return str(value) if value else None
