"""Combine the saved outputs of several runs into one submission, without running any model again.

Classification: probabilities are averaged with equal weights, or with non-negative weights (summing to 1) fitted
on the dev logits by minimising the log-loss; k-fold cross-validation on dev shows whether the fitted weights
really help. Pair scoring (F24 to S26): the runs' pair scores are averaged. The combined task (F26): both, in one
file. The models together must fit the term's parameter limit; ``fit_limit`` picks the subset of runs with the best
cross-validated dev score (the term's own metric) that fits. ``ensemble_verification`` writes a term's verification
submission from the runs' saved ``verify`` scores: identity matching (F22 to S24; the similarities averaged, the
threshold tuned again on dev) or pairs (S22, F24 to S26).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import softmax

from .combined import check_same_weights, format_setting, load_pair_scores
from .competitions import Family
from .data.layout import Layout, find_layout
from .errors import UserError
from .io import write_json
from .limits import check_limit, known_parameters, run_parameters, runs_record
from .run import RunDir
from .submission import write_combined, write_submission
from .verification.identity import (
    NO_THRESHOLD,
    IdentityScores,
    evaluate_similarity,
    tuned_accuracy,
    write_identity_submission,
)
from .verification.metrics import roc
from .verification.pairs import write_pair_submission
from .verification.similarity import PLAIN

logger = logging.getLogger(__name__)

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


def same_scoring(scorings: list[str], what: str) -> None:
    """Refuse to average scores of different kinds (plain cosine, expanded, re-ranked, against another gallery):
    their scales and columns differ."""
    if len(set(scorings)) > 1:
        kinds = "; ".join(sorted(set(scorings)))
        flags = "--expand, --rerank and --gallery" if what == "identity" else "--expand and --rerank"
        raise UserError(f"the runs' {what} scores are of different kinds ({kinds}): verify all with the same {flags}")


def _pair_part(folders: list[Path], names: list[str]) -> dict[str, np.ndarray]:
    """(runs, pairs) val and test scores, with the val labels; refuses runs scored on other pairs."""
    parts = []
    for folder, name in zip(folders, names, strict=True):
        part = load_pair_scores(folder)
        if part is None:
            raise UserError(f"{folder} has no pair scores: run `facenext verify {name} --out {folder}` first")
        parts.append(part)
    if all("test_scores" not in p for p in parts):
        raise UserError("the runs have no test pair scores: verify them where the competition's test pairs are")
    for key in ("val_labels", "test_scores"):
        if any(key not in p or len(p[key]) != len(parts[0].get(key, [])) for p in parts):
            raise UserError(f"the runs' pair scores differ in {key}: verify every run on the same competition")
    if any(not np.array_equal(p["val_labels"], parts[0]["val_labels"]) for p in parts):
        raise UserError("the runs' val pairs differ: verify every run on the same competition")
    same_scoring([str(p.get("scoring", PLAIN)) for p in parts], "pair")  # files from before re-ranking: cosine
    return {
        "val": np.stack([p["val_scores"] for p in parts]).astype(np.float64),
        "val_labels": parts[0]["val_labels"],
        "test": np.stack([p["test_scores"] for p in parts]).astype(np.float64),
    }


def _eer_auc(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    if len(set(labels.tolist())) < 2:
        return math.nan, math.nan
    curve = roc(scores, labels)
    return curve.eer, curve.auc


def dev_score(
    family: Family,
    weights: np.ndarray,
    dev_probs: np.ndarray | None,
    labels: np.ndarray | None,
    pairs: dict[str, np.ndarray] | None,
) -> dict[str, float]:
    """The ensemble's dev accuracy, EER and score in the term's metric, with these weights."""
    found: dict[str, float] = {}
    if dev_probs is not None:
        found["dev_acc"] = float((_mix(dev_probs, weights).argmax(1) == labels).mean())
    if pairs is not None:
        found["dev_eer"], found["dev_auc"] = _eer_auc(np.tensordot(weights, pairs["val"], axes=1), pairs["val_labels"])
    found["dev_score"] = family.dev_score(found.get("dev_acc", math.nan), found.get("dev_eer"), found.get("dev_auc"))
    return found


def _cv_score(
    family: Family,
    dev_probs: np.ndarray | None,
    labels: np.ndarray | None,
    pairs: dict[str, np.ndarray] | None,
    folds: int,
) -> float:
    """Mean of the equal-weight ensemble's dev score over held-out folds of the dev images and the val pairs."""
    rng = np.random.default_rng(0)
    # No more folds than items: an empty held-out fold has no score (a tiny dev split, e.g. the demo's)
    sizes = [len(labels)] if dev_probs is not None else []
    sizes += [len(pairs["val_labels"])] if pairs is not None else []
    folds = max(1, min([folds, *sizes]))
    image_folds = np.array_split(rng.permutation(len(labels)), folds) if dev_probs is not None else [None] * folds
    pair_folds = (
        np.array_split(rng.permutation(len(pairs["val_labels"])), folds) if pairs is not None else [None] * folds
    )
    runs = (dev_probs if dev_probs is not None else pairs["val"]).shape[0]
    equal = np.full(runs, 1 / runs)
    scores = []
    for images, held_pairs in zip(image_folds, pair_folds, strict=True):
        probs = dev_probs[:, images] if images is not None else None
        fold_labels = labels[images] if images is not None else None
        fold_pairs = None
        if held_pairs is not None:
            fold_pairs = {"val": pairs["val"][:, held_pairs], "val_labels": pairs["val_labels"][held_pairs]}
        scores.append(dev_score(family, equal, probs, fold_labels, fold_pairs)["dev_score"])
    return float(np.nanmean(scores)) if not np.isnan(scores).all() else float("nan")


def fit_to_limit(
    names: list[str],
    params: list[int],
    limit: int,
    family: Family,
    dev_probs: np.ndarray | None,
    labels: np.ndarray | None,
    pairs: dict[str, np.ndarray] | None,
    folds: int = 5,
) -> tuple[list[int], dict[str, float]]:
    """The subset of runs (indices) whose parameters fit ``limit`` with the best cross-validated dev score.

    Ties go to fewer parameters. Every subset is tried: ensembles are a handful of runs.
    """
    if len(names) > 12:
        raise UserError(f"--fit-limit tries every subset: name at most 12 runs, not {len(names)}")
    tried: dict[tuple[int, ...], float] = {}
    for mask in range(1, 2 ** len(names)):
        subset = tuple(i for i in range(len(names)) if mask >> i & 1)
        if sum(params[i] for i in subset) > limit:
            continue
        take = list(subset)
        probs = dev_probs[take] if dev_probs is not None else None
        sub_pairs = {**pairs, "val": pairs["val"][take]} if pairs is not None else None
        tried[subset] = _cv_score(family, probs, labels, sub_pairs, folds)
    if not tried:
        smallest = min(params)
        raise UserError(
            f"no run fits the limit of {limit / 1e6:g} M parameters (the smallest has {smallest / 1e6:.2f} M)"
        )
    best = max(tried, key=lambda k: (np.nan_to_num(tried[k], nan=-np.inf), -sum(params[i] for i in k)))
    return list(best), {"cv_dev_score": tried[best], "subsets_tried": len(tried)}


def _dev_probs(folders: list[Path], names: list[str], parts: list[dict[str, np.ndarray]], needed: bool):
    """(runs, images, classes) dev probabilities and labels, when every run has dev logits (or ``needed``)."""
    dev_paths = [f / "dev_logits.npz" for f in folders]
    if not (needed or all(p.is_file() for p in dev_paths)):
        return None, None
    dev = [load_logits(p) for p in dev_paths]
    _same(dev, names, ("classes", "ids", "labels"), "dev")
    if not np.array_equal(dev[0]["classes"], parts[0]["classes"]):
        raise UserError(f"{names[0]}: its dev and test logits have other class lists: predict both again")
    return _probs(dev), dev[0]["labels"]


def prediction_folders(runs: list[str | Path], predictions: str | Path) -> list[Path]:
    """Each run's saved outputs, ``predictions/<run name>``; two different runs with one name would share a folder,
    and the ensemble would count one model's outputs twice, so they are refused."""
    by_name: dict[str, Path] = {}
    for run in runs:
        where = Path(run).resolve()
        other = by_name.setdefault(Path(run).name, where)
        if other != where:
            raise UserError(
                f"{other} and {where} share the folder name {where.name}, so their predictions would share "
                f"{Path(predictions) / where.name}: rename one run folder, then predict and verify it again"
            )
    return [Path(predictions) / Path(r).name for r in runs]


def ensemble(
    runs: list[str | Path],
    out: str | Path = "submissions/submission.csv",
    predictions: str | Path = "submissions",
    weights: str = "equal",
    folds: int = 5,
    data_root: str | None = None,
    fit_limit: bool = False,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Average the runs' test outputs (``equal`` or dev-``fit`` weights for classification) and write ``out``.

    Dev logits (``predict --split dev``) are needed by ``fit``; when every run has them, the dev accuracy of each
    run and of the ensemble is reported as well. Pair terms need each run's ``verify`` output (pair scores). The
    runs' parameters together must fit the term's limit; with ``fit_limit`` the best-scoring subset that fits is
    used instead, and the runs left out are named. The summary goes to ``out`` with the suffix ``.json``.
    """
    if not runs:
        raise UserError("name at least one run folder to ensemble")
    if weights not in WEIGHTINGS:
        raise UserError(f"unknown weights {weights!r}: use one of {', '.join(WEIGHTINGS)}")
    first = RunDir(runs[0])
    config, classes = first.config(), first.classes()
    layout = find_layout(data_root or config.data.root, config.data.term)
    if fit_limit and layout.term.param_limit is None:
        raise UserError(
            f"--fit-limit: no parameter limit is known for {layout.term.key.upper()}, so every subset fits: "
            "drop --fit-limit (the ensemble then uses every run)"
        )
    family = layout.family
    names = [str(r) for r in runs]
    folders = prediction_folders(runs, predictions)
    kind = family.ensemble_kind(layout.term)  # the file it writes decides what it combines
    with_logits, with_pair_scores = kind != "verification", kind != "classification"
    parts = [load_logits(f / "test_logits.npz") for f in folders] if with_logits else []
    if parts:
        _same(parts, names, ("classes", "ids"), "test")
        if list(classes) != parts[0]["classes"].tolist():
            raise UserError(f"{first.classes_file} differs from its saved logits: run `facenext predict` again")
    pairs = _pair_part(folders, names) if with_pair_scores else None
    if parts and pairs is not None:  # F26: each run's two parts must come from the same weights
        for folder, run, part in zip(folders, runs, parts, strict=True):
            check_same_weights(folder, Path(run), part, load_pair_scores(folder) or {})
    dev_probs, labels = _dev_probs(folders, names, parts, weights == "fit" or fit_limit) if parts else (None, None)
    summary: dict[str, Any] = {"runs": names, "weighting": weights, "term": layout.term.key}

    what = f"the ensemble of {', '.join(names)}"
    counts = [run_parameters(r) for r in runs]
    params = known_parameters([Path(r) for r in runs], layout.term, what, counts)  # unknown: refused under a limit
    if fit_limit:
        keep, report = fit_to_limit(names, params, layout.term.param_limit, family, dev_probs, labels, pairs, folds)
        left_out = [n for i, n in enumerate(names) if i not in keep]
        logger.info(
            f"--fit-limit: kept {', '.join(names[i] for i in keep)} ({sum(params[i] for i in keep) / 1e6:.2f} M of "
            f"{layout.term.param_limit / 1e6:g} M), cross-validated dev score {report['cv_dev_score']:.4f}; "
            f"left out: {', '.join(left_out) or 'nothing'}"
        )
        summary.update(left_out=left_out, fit_limit=report)
        names, folders, params = [names[i] for i in keep], [folders[i] for i in keep], [params[i] for i in keep]
        runs, counts = [runs[i] for i in keep], [counts[i] for i in keep]
        parts = [parts[i] for i in keep] if parts else []
        dev_probs = dev_probs[keep] if dev_probs is not None else None
        if pairs is not None:
            pairs = {**pairs, "val": pairs["val"][keep], "test": pairs["test"][keep]}
    what = f"the ensemble of {', '.join(names)}"
    summary["parameters"] = check_limit([Path(r) for r in runs], layout.term, what, counts=counts)
    summary.update(runs_record(runs, counts))  # absolute paths: `submit` finds the runs from any folder

    w = np.full(len(names), 1 / len(names))
    if dev_probs is not None:
        summary["dev_acc_runs"] = {
            n: float((p.argmax(1) == labels).mean()) for n, p in zip(names, dev_probs, strict=True)
        }
        summary["dev_acc_equal"] = float((_mix(dev_probs, w).argmax(1) == labels).mean())
        summary["dev_loss_equal"] = log_loss(_mix(dev_probs, w), labels)
        if weights == "fit":
            w = fit_weights(dev_probs, labels)
            summary["dev_acc_fit"] = float((_mix(dev_probs, w).argmax(1) == labels).mean())
            summary["dev_loss_fit"] = log_loss(_mix(dev_probs, w), labels)
            summary["cv"] = cv = cross_validate(dev_probs, labels, folds)
            logger.info(
                f"{cv['folds']}-fold CV on dev: fitted weights acc {cv['fit_acc']:.4f} (log-loss {cv['fit_loss']:.4f}) "
                f"vs equal {cv['equal_acc']:.4f} ({cv['equal_loss']:.4f}): gain {cv['acc_gain']:+.4f} accuracy"
            )
        logger.info(
            f"ensemble dev accuracy {summary[f'dev_acc_{weights}']:.4f} ({weights} weights, {len(labels)} images)"
        )
    elif weights == "fit":
        raise UserError("--weights fit needs the runs' dev logits: run `facenext predict RUN --split dev` first")
    summary["weights"] = {n: float(x) for n, x in zip(names, w, strict=True)}
    pair_w = np.full(len(names), 1 / len(names))  # scores are averaged equally: fitted weights are for probabilities
    if pairs is not None:
        summary.update(dev_score(family, pair_w, None, None, pairs))
        if dev_probs is not None:
            summary["dev_acc"] = float((_mix(dev_probs, w).argmax(1) == labels).mean())
            summary["dev_score"] = family.dev_score(summary["dev_acc"], summary["dev_eer"], summary["dev_auc"])
        logger.info(
            f"ensemble dev EER {summary['dev_eer']:.4f}, dev score ({family.score_name}) {summary['dev_score']:.4f}"
        )
    out = Path(out)
    fmt, source = format_setting(fmt, config.predict.submission_format, first.config_file)  # as predict and verify
    summary["format"] = _write(out, layout, kind, parts, w, pairs, pair_w, len(classes), fmt, source)
    rows = len(pd.read_csv(out, dtype=str))
    summary.update(submission=str(out), rows=rows)
    write_json(out.with_suffix(".json"), summary)
    logger.info(f"wrote {out}: {rows} rows from {len(names)} run(s), weights " + ", ".join(f"{x:.3f}" for x in w))
    return summary


def _write(
    out: Path,
    layout: Layout,
    kind: str,
    parts: list[dict[str, np.ndarray]],
    w: np.ndarray,
    pairs: dict[str, np.ndarray] | None,
    pair_w: np.ndarray,
    num_classes: int,
    fmt: str | None,
    fmt_source: str | None = None,
) -> str:
    """The submission of ``kind`` (the family's ``ensemble_kind``); returns the format's name."""
    labels = _mix(_probs(parts), w).argmax(1) if parts else None
    scores = np.tensordot(pair_w, pairs["test"], axes=1) if pairs is not None else None
    if kind == "combined":
        return write_combined(out, layout, labels, scores, fmt, num_classes, fmt_source).name
    if kind == "verification":
        write_pair_submission(out, layout, scores)
        return "pairs"
    columns = {"id": parts[0]["ids"].tolist(), "label": labels}
    write_submission(out, columns, layout=layout, kind="classification", num_classes=num_classes)
    return "classification"


def _identity_part(folders: list[Path], names: list[str]) -> list[IdentityScores]:
    """Each run's saved identity scores; refuses runs verified on other images or identities, or scored otherwise."""
    parts = []
    for folder, name in zip(folders, names, strict=True):
        part = IdentityScores.load(folder)
        if part is None:
            raise UserError(f"{folder} has no identity scores: run `facenext verify {name} --out {folder}` first")
        parts.append(part)
    same_scoring([p.scoring for p in parts], "identity")  # first: another gallery has other columns too
    first = parts[0]
    for name, part in zip(names[1:], parts[1:], strict=True):
        for key, what in (
            ("names", "known identities"),
            ("dev_files", "unknown_dev images"),
            ("dev_truth", "unknown_dev labels"),
            ("test_ids", "test ids"),
            ("test_files", "unknown_test images"),
        ):
            a, b = getattr(first, key), getattr(part, key)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                raise UserError(
                    f"{name} was verified with other {what} than {names[0]}: verify every run on the same data"
                )
    if first.test is None:
        raise UserError(
            f"{folders[0]} holds no unknown_test scores: verify the runs with `facenext verify RUN --data DIR`, DIR "
            "holding the competition's unknown_test/ images"
        )
    return parts


def _ensemble_identities(folders: list[Path], names: list[str], layout: Layout, out: Path) -> dict[str, Any]:
    """Average the runs' unknown x known similarities, tune the threshold again on dev, write the submission."""
    parts = _identity_part(folders, names)
    first, summary = parts[0], {"scoring": parts[0].scoring}
    threshold = NO_THRESHOLD
    if first.dev is None:
        logger.info("no unknown_dev labels: no threshold tuned, every test image gets its best-matching identity")
    else:
        no_match = layout.term.no_match
        summary["dev_accuracy_runs"] = [tuned_accuracy(p.dev, first.dev_truth, first.names, no_match) for p in parts]
        alone = ", ".join(f"{acc:.4f}" for acc in summary["dev_accuracy_runs"])
        logger.info(f"the runs alone: verification dev accuracy {alone} ({first.scoring})")
        dev = np.mean([p.dev for p in parts], axis=0)
        found, threshold = evaluate_similarity(dev, first.dev_truth, first.names, layout, None)
        summary.update(found)
    test = np.mean([p.test for p in parts], axis=0)
    summary.update(write_identity_submission(out, layout, first.test_ids.tolist(), test, first.names, threshold))
    return summary


def _ensemble_pairs(folders: list[Path], names: list[str], layout: Layout, out: Path) -> dict[str, Any]:
    """Average the runs' pair scores with equal weights, report the dev score, write the submission."""
    pairs = _pair_part(folders, names)
    equal = np.full(len(names), 1 / len(names))
    summary = dev_score(layout.family, equal, None, None, pairs)
    logger.info(
        f"ensemble dev EER {summary['dev_eer']:.4f}, AUC {summary['dev_auc']:.4f}, dev score "
        f"({layout.family.score_name}) {summary['dev_score']:.4f} ({len(pairs['val_labels'])} pairs)"
    )
    return {**summary, **write_pair_submission(out, layout, np.tensordot(equal, pairs["test"], axes=1))}


# The verification ensemble of each verifier (``Family.verifier``).
VERIFICATION_ENSEMBLES = {"identity": _ensemble_identities, "pairs": _ensemble_pairs}


def ensemble_verification(
    runs: list[str | Path], out: str | Path, predictions: str | Path = "submissions", data_root: str | None = None
) -> dict[str, Any]:
    """Average the runs' scores for the term's verification competition and write its submission at ``out``.

    Identity matching (F22 to S24): the unknown x known similarities are averaged and the no-match threshold is
    tuned again on dev; pair scoring (S22, F24 to S26): the pair scores are averaged. Each run needs its ``facenext
    verify`` output in ``predictions/<run name>``, every run scored alike (``--expand``, ``--rerank``); the averaged
    scores are only as comparable as the runs' own, so weights are equal. F26 ranks both tasks in one file: its
    ensembles are ``ensemble`` without ``--verification``.
    """
    if not runs:
        raise UserError("name at least one run folder to ensemble")
    config = RunDir(runs[0]).config()
    layout = find_layout(data_root or config.data.root, config.data.term)
    if "verification" not in layout.family.scored_kinds(layout.term):
        raise UserError(f"{layout.term.key.upper()} scores both tasks in one file: ensemble without --verification")
    names = [str(r) for r in runs]
    folders = prediction_folders(runs, predictions)
    out = Path(out)
    summary: dict[str, Any] = {"runs": names, "weighting": "equal", "term": layout.term.key, "task": "verification"}
    what = f"the ensemble of {', '.join(names)}"
    counts = [run_parameters(r) for r in runs]
    summary["parameters"] = check_limit([Path(r) for r in runs], layout.term, what, "name fewer runs", counts)
    summary.update(runs_record(runs, counts))
    summary.update(VERIFICATION_ENSEMBLES[layout.family.verifier](folders, names, layout, out))
    summary["rows"] = len(pd.read_csv(out, dtype=str))
    write_json(out.with_suffix(".json"), summary)
    return summary
