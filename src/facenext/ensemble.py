"""Combine the saved logits of several runs into one submission, without running any model again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from .data.layout import find_layout
from .engine.checkpoint import write_json
from .engine.train import load_run_config
from .errors import UserError
from .submission import check_classification_submission, write_submission


def load_logits(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path} not found: run `facenext predict` for that run first")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def ensemble(
    runs: list[str | Path], out: str | Path = "submissions/submission.csv", predictions: str | Path = "submissions"
) -> dict[str, Any]:
    """Average the runs' test probabilities (equal weights) and write the submission to ``out``."""
    if not runs:
        raise UserError("name at least one run folder to ensemble")
    parts = [load_logits(Path(predictions) / Path(r).name / "test_logits.npz") for r in runs]
    first = parts[0]
    for run, part in zip(runs[1:], parts[1:], strict=True):
        for key in ("ids", "classes"):
            if not np.array_equal(part[key], first[key]):
                raise UserError(
                    f"{run} has other {key} than {runs[0]}: ensemble runs trained and predicted on the same competition"
                )
    probs = np.mean([softmax(p["logits"].astype(np.float32), axis=1) for p in parts], axis=0)
    out = Path(out)
    write_submission(out, {"id": first["ids"].tolist(), "label": probs.argmax(1)})
    config, classes = load_run_config(Path(runs[0]))
    check_classification_submission(out, find_layout(config.data.root, config.data.term), len(classes))
    summary = {"runs": [str(r) for r in runs], "submission": str(out), "rows": len(first["ids"])}
    write_json(out.with_suffix(".json"), summary)
    print(f"wrote {out}: {len(first['ids'])} rows from {len(runs)} run(s)")
    return summary
