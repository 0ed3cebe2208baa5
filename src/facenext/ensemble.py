"""Combine the saved logits of several runs into one submission, without running any model again.

Probabilities are averaged with equal weights, or with non-negative weights (summing to 1) fitted on the dev
logits by minimising the log-loss; k-fold cross-validation on dev shows whether the fitted weights really help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from .data.layout import find_layout
from .errors import UserError
from .io import write_json
from .run import RunDir
from .submission import write_submission

WEIGHTINGS = ("equal", "fit")


def load_logits(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        split = "dev" if path.name.startswith("dev") else "test"
        raise UserError(f"{path} not found: run `facenext predict RUN --split {split}` for that run first")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _same(parts: list[dict[str, np.ndarray]], runs: list[str], keys: tuple[str, ...], split: str) -> None:
    """Refuse parts whose ids, classes (or labels) differ from the first run's, naming the first difference."""
    first = parts[0]
    for run, part in zip(runs[1:], parts[1:], strict=True):
        for key in keys:
            a, b = first[key], part[key]
            if np.array_equal(a, b):
                continue
            if len(a) != len(b):
                detail = f"{len(b)} vs {len(a)}"
            else:
                i = int(np.argmax(a != b))
                detail = f"first difference at position {i}: {b[i]} vs {a[i]}"
            raise UserError(
                f"{run} has other {split} {key} than {runs[0]} ({detail}): ensemble runs trained and predicted on the "
                "same competition"
            )


def _probs(parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(runs, images, classes) float64 probabilities."""
    return np.stack([softmax(p["logits"].astype(np.float64), axis=1) for p in parts])


def _mix(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, probs, axes=1)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the dev log-loss of the weighted mean probability."""
    runs = probs.shape[0]
    if runs == 1:
        return np.ones(1)
    true = probs[:, np.arange(len(labels)), labels].T  # (images, runs): each run's probability of the truth

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.clip(true @ w, 1e-12, None)
        return float(-np.log(p).mean()), -(true / p[:, None]).mean(0)

    result = minimize(
        loss,
        np.full(runs, 1 / runs),
        jac=True,
        method="SLSQP",
        bounds=[(0, 1)] * runs,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones_like(w)}],
    )
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


def cross_validate(probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit weights on k-1 folds of dev, score the held-out fold; fitted against equal weights, averaged over folds."""
    n = len(labels)
    folds = max(2, min(folds, n))
    order = np.random.default_rng(seed).permutation(n)
    equal = np.full(probs.shape[0], 1 / probs.shape[0])
    scores = {"equal_loss": [], "fit_loss": [], "equal_acc": [], "fit_acc": []}
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        w = fit_weights(probs[:, train], labels[train])
        for name, weights in (("equal", equal), ("fit", w)):
            mixed = _mix(probs[:, held], weights)
            scores[f"{name}_loss"].append(log_loss(mixed, labels[held]))
            scores[f"{name}_acc"].append(float((mixed.argmax(1) == labels[held]).mean()))
    report: dict[str, Any] = {"folds": folds, **{k: float(np.mean(v)) for k, v in scores.items()}}
    report["acc_gain"] = report["fit_acc"] - report["equal_acc"]
    report["loss_gain"] = report["equal_loss"] - report["fit_loss"]
    return report


def ensemble(
    runs: list[str | Path],
    out: str | Path = "submissions/submission.csv",
    predictions: str | Path = "submissions",
    weights: str = "equal",
    folds: int = 5,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Average the runs' test probabilities (``equal`` or dev-``fit`` weights) and write the submission to ``out``.

    Dev logits (``predict --split dev``) are needed by ``fit``; when every run has them, the dev accuracy of each
    run and of the ensemble is reported as well. The summary goes to ``out`` with the suffix ``.json``.
    """
    if not runs:
        raise UserError("name at least one run folder to ensemble")
    if weights not in WEIGHTINGS:
        raise UserError(f"unknown weights {weights!r}: use one of {', '.join(WEIGHTINGS)}")
    names = [str(r) for r in runs]
    folders = [Path(predictions) / Path(r).name for r in runs]
    parts = [load_logits(f / "test_logits.npz") for f in folders]
    _same(parts, names, ("classes", "ids"), "test")
    summary: dict[str, Any] = {"runs": names, "weighting": weights}

    dev_paths = [f / "dev_logits.npz" for f in folders]
    if weights == "fit" or all(p.is_file() for p in dev_paths):
        dev = [load_logits(p) for p in dev_paths]
        _same(dev, names, ("classes", "ids", "labels"), "dev")
        if not np.array_equal(dev[0]["classes"], parts[0]["classes"]):
            raise UserError(f"{names[0]}: its dev and test logits have other class lists: predict both again")
        dev_probs, labels = _probs(dev), dev[0]["labels"]
        summary["dev_acc_runs"] = {
            n: float((p.argmax(1) == labels).mean()) for n, p in zip(names, dev_probs, strict=True)
        }
        equal = np.full(len(runs), 1 / len(runs))
        summary["dev_acc_equal"] = float((_mix(dev_probs, equal).argmax(1) == labels).mean())
        summary["dev_loss_equal"] = log_loss(_mix(dev_probs, equal), labels)
        if weights == "fit":
            w = fit_weights(dev_probs, labels)
            summary["dev_acc_fit"] = float((_mix(dev_probs, w).argmax(1) == labels).mean())
            summary["dev_loss_fit"] = log_loss(_mix(dev_probs, w), labels)
            summary["cv"] = cv = cross_validate(dev_probs, labels, folds)
            print(
                f"{cv['folds']}-fold CV on dev: fitted weights acc {cv['fit_acc']:.4f} (log-loss {cv['fit_loss']:.4f}) "
                f"vs equal {cv['equal_acc']:.4f} ({cv['equal_loss']:.4f}): gain {cv['acc_gain']:+.4f} accuracy"
            )
        else:
            w = equal
        print(f"ensemble dev accuracy {summary[f'dev_acc_{weights}']:.4f} ({weights} weights, {len(labels)} images)")
    else:
        w = np.full(len(runs), 1 / len(runs))
    summary["weights"] = {n: float(x) for n, x in zip(names, w, strict=True)}
    probs = _mix(_probs(parts), w)
    out = Path(out)
    first = RunDir(runs[0])
    config, classes = first.config(), first.classes()
    if list(classes) != parts[0]["classes"].tolist():
        raise UserError(f"{first.classes_file} differs from its saved logits: run `facenext predict` again")
    layout = find_layout(data_root or config.data.root, config.data.term)
    write_submission(
        out,
        {"id": parts[0]["ids"].tolist(), "label": probs.argmax(1)},
        layout=layout,
        kind="classification",
        num_classes=len(classes),
    )
    summary.update(submission=str(out), rows=len(parts[0]["ids"]))
    write_json(out.with_suffix(".json"), summary)
    print(
        f"wrote {out}: {len(parts[0]['ids'])} rows from {len(runs)} run(s), weights " + ", ".join(f"{x:.3f}" for x in w)
    )
    return summary
