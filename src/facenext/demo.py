"""The whole path on built-in sample data: sample competition -> train -> predict -> ensemble -> verify.

``--term f26`` runs the combined task instead: the F26 layout, training scored by ``0.5 x acc + 0.5 x (1 - EER)``,
test predictions and pair scores, and the one combined submission (format ``cls+ver-rows`` unless the config names
another), checked as ``check-submission`` checks it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .competitions import DEFAULT_TERM, combined_score, family_of, get_term
from .config import load_config
from .data.layout import find_layout
from .data.sample import write_sample_competition
from .engine.train import train
from .ensemble import ensemble
from .errors import UserError
from .io import write_bytes, write_json
from .predict import predict
from .verification import verify

logger = logging.getLogger(__name__)


def _sample_exists(root: Path, term: str = "auto") -> bool:
    try:
        find_layout(root, term)
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


def _demo_folders(data: str, run_dir: str, term: str) -> tuple[Path, str]:
    """The sample's folder and the run's: each term but the default in its own, unless named."""
    data_root = Path(data)
    if term != DEFAULT_TERM:
        if data_root == Path("data/sample"):
            data_root = Path(f"data/sample_{term}")
        if Path(run_dir) == Path("runs/demo"):
            run_dir = f"runs/demo_{term}"
    return data_root, run_dir


def run_demo(
    config_path: str = "configs/demo.yaml",
    data: str = "data/sample",
    run_dir: str = "runs/demo",
    submissions: str = "submissions",
    overrides: list[str] | None = None,
    term: str = DEFAULT_TERM,
) -> dict[str, Any]:
    """The demo of the term's kind of competition (its family's verifier): two files, or one at the end."""
    try:
        verifier = family_of(get_term(term)).verifier
    except KeyError as e:
        raise UserError(e.args[0]) from None
    return DEMOS[verifier](config_path, data, run_dir, submissions, overrides, term)


def run_identity_demo(
    config_path: str,
    data: str,
    run_dir: str,
    submissions: str,
    overrides: list[str] | None,
    term: str,
) -> dict[str, Any]:
    """The demo on an identity-matching term (F23): a classification and a verification submission."""
    start = time.perf_counter()
    data_root, run_dir = _demo_folders(data, run_dir, term)
    out = Path(submissions)
    if not _sample_exists(data_root):
        logger.info(f"writing the sample competition to {data_root}")
        write_sample_competition(data_root, term)
    config = load_config(config_path, [f"data.root={data_root}", *(overrides or [])])
    trained = train(config, run_dir)
    predict(run_dir, "test", out_dir=out / Path(run_dir).name)
    suffix = "" if term == DEFAULT_TERM else f"_{term}"  # another term's demo keeps the default's files
    submission = out / f"submission{suffix}.csv"
    ensemble([run_dir], out=submission, predictions=out)
    verified = verify(run_dir, out_dir=out / Path(run_dir).name)
    ver_submission = out / f"verification_submission{suffix}.csv"
    write_bytes(ver_submission, Path(verified["submission"]).read_bytes())
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
    write_json(out / f"demo_summary{suffix}.json", summary)
    logger.info(
        "\ndemo summary: "
        f"classification dev accuracy {summary['dev_accuracy']:.3f} (test {summary['test_accuracy']:.3f}), "
        f"verification dev accuracy {summary['verification_dev_accuracy']:.3f} "
        f"(test {summary['verification_test_accuracy']:.3f}), wall time {summary['wall_s']:.0f} s"
        f"\nsaved to {out / f'demo_summary{suffix}.json'}"
    )
    return summary


def score_combined(submission: Path, answers: Path) -> dict[str, float] | None:
    """Test accuracy, EER and combined score of a combined submission against the sample's answer keys."""
    from .verification.metrics import roc

    cls_path, pairs_path = answers / "classification_test.csv", answers / "verification_test_pairs.csv"
    if not cls_path.is_file() or not pairs_path.is_file():
        return None
    ours = pd.read_csv(submission, dtype=str)
    truth = pd.read_csv(cls_path, dtype=str)
    id_col, value_col = ours.columns[:2]
    is_image = ours[id_col].isin(set(truth["id"]))
    labels = dict(zip(ours[id_col][is_image], ours[value_col][is_image], strict=True))
    accuracy = float(np.mean([labels.get(i) == label for i, label in zip(truth["id"], truth["label"], strict=True)]))
    genuine = pd.read_csv(pairs_path).iloc[:, 1].to_numpy()
    eer = roc(ours[value_col][~is_image].astype(float).to_numpy(), genuine).eer
    return {"test_accuracy": accuracy, "test_eer": eer, "test_score": combined_score(accuracy, eer)}


def run_pairs_demo(
    config_path: str,
    data: str,
    run_dir: str,
    submissions: str,
    overrides: list[str] | None,
    term: str,
) -> dict[str, Any]:
    """The demo on a pair-scoring term (S25 to S26) or the combined task (F26): one submission at the end."""
    from .limits import limit_margin
    from .submission import check_submission

    start = time.perf_counter()
    data_root, run_dir = _demo_folders(data, run_dir, term)
    out = Path(submissions)
    if not _sample_exists(data_root, term):
        logger.info(f"writing the {term.upper()} sample competition to {data_root}")
        write_sample_competition(data_root, term)
    layout = find_layout(data_root, term)
    combined = layout.family.one_file
    settings = [f"data.root={data_root}", f"data.term={term}"]
    if combined and not layout.samples:  # no sample submission to follow: the README's assumed format, named
        settings.append("predict.submission_format=cls+ver-rows")
    config = load_config(config_path, [*settings, *(overrides or [])])
    trained = train(config, run_dir)
    run_out = out / Path(run_dir).name
    if combined:  # dev logits give the ensemble's dev accuracy, test logits the classification part
        predict(run_dir, "dev", out_dir=run_out)
        predict(run_dir, "test", out_dir=run_out)
    verified = verify(run_dir, out_dir=run_out)
    submission = out / f"submission_{term}.csv"
    ensemble([run_dir], out=submission, predictions=out, fmt=config.predict.submission_format)
    checked = check_submission(submission, layout, fmt=config.predict.submission_format)
    summary: dict[str, Any] = {
        "term": term,
        "score": trained.get("score"),
        "dev_accuracy": trained.get("best_dev_acc"),
        "dev_eer": trained.get("best_dev_eer"),
        "dev_score": trained.get("best_dev_score"),
        # the submission's verification part is verify's (its TTA and scoring), not the training epoch's plain check
        "verify_dev_eer": verified["dev_eer"],
        "verify_scoring": f"{verified['tta']} TTA, {verified['scoring']['chosen']}",
        "parameters": trained["parameters"],
        "limit": limit_margin(trained["parameters"], layout.term),
        "format": checked.name,
        "submission": str(submission),
    }
    if combined:
        summary.update(score_combined(submission, data_root / "answers") or {})
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(out / f"demo_summary_{term}.json", summary)
    tests = ", ".join(
        f"{k.removeprefix('test_')} {summary[k]:.3f}"
        for k in ("test_accuracy", "test_eer", "test_score")
        if k in summary
    )
    logger.info(
        f"\ndemo summary ({term.upper()}): best epoch's dev accuracy {summary['dev_accuracy']:.3f}, "
        f"dev EER {summary['dev_eer']:.3f}, dev score {summary['dev_score']:.3f}"
        + f"; verify's dev EER {summary['verify_dev_eer']:.3f} ({summary['verify_scoring']})"
        + (f"; test {tests}" if tests else "")
        + f"; {summary['limit']}; {submission} passes check-submission ({checked.name}); "
        f"wall time {summary['wall_s']:.0f} s\nsaved to {out / f'demo_summary_{term}.json'}"
    )
    return summary


# The demo of each verifier (``Family.verifier``).
DEMOS = {"identity": run_identity_demo, "pairs": run_pairs_demo}
