"""The whole path on built-in sample data: sample competition -> train -> predict -> ensemble -> verify."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import load_config
from .data.layout import find_layout
from .data.sample import write_sample_competition
from .engine.train import train
from .ensemble import ensemble
from .errors import UserError
from .io import write_json
from .predict import predict
from .verification import verify


def _sample_exists(root: Path) -> bool:
    try:
        find_layout(root)
    except UserError:
        return False
    return True


def score_against_answers(submission: Path, answers: Path) -> float | None:
    """Accuracy of a submission against the sample competition's answer key (sample data only has one)."""
    if not answers.is_file():
        return None
    ours, truth = pd.read_csv(submission, dtype=str), pd.read_csv(answers, dtype=str)
    merged = truth.merge(ours, on="id", suffixes=("_true", "_pred"))
    return float(np.mean(merged["label_true"] == merged["label_pred"])) if len(merged) == len(truth) else None


def run_demo(
    config_path: str = "configs/demo.yaml",
    data: str = "data/sample",
    run_dir: str = "runs/demo",
    submissions: str = "submissions",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    data_root, out = Path(data), Path(submissions)
    if not _sample_exists(data_root):
        print(f"writing the sample competition to {data_root}")
        write_sample_competition(data_root)
    config = load_config(config_path, [f"data.root={data}", *(overrides or [])])
    trained = train(config, run_dir)
    predict(run_dir, "test", out_dir=out / Path(run_dir).name)
    submission = out / "submission.csv"
    ensemble([run_dir], out=submission, predictions=out)
    verified = verify(run_dir, out_dir=out / Path(run_dir).name)
    ver_submission = out / "verification_submission.csv"
    shutil.copyfile(verified["submission"], ver_submission)
    summary = {
        "dev_accuracy": trained["best_dev_acc"],
        "test_accuracy": score_against_answers(submission, data_root / "answers" / "classification_test.csv"),
        "verification_dev_accuracy": verified.get("dev_accuracy"),
        "verification_test_accuracy": score_against_answers(
            ver_submission, data_root / "answers" / "verification_test.csv"
        ),
        "parameters": trained["parameters"],
        "wall_s": round(time.perf_counter() - start, 1),
        "submission": str(submission),
        "verification_submission": str(ver_submission),
    }
    write_json(out / "demo_summary.json", summary)
    print(
        "\ndemo summary: "
        f"classification dev accuracy {summary['dev_accuracy']:.3f} (test {summary['test_accuracy']:.3f}), "
        f"verification dev accuracy {summary['verification_dev_accuracy']:.3f} "
        f"(test {summary['verification_test_accuracy']:.3f}), wall time {summary['wall_s']:.0f} s"
        f"\nsaved to {out / 'demo_summary.json'}"
    )
    return summary
