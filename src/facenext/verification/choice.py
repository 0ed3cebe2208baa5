"""Scoring chosen on dev: query expansion and re-ranking only where they help beyond the noise of dev.

``verify.expand`` and ``verify.rerank`` may be ``auto``. Then every candidate (plain cosine, each k of expansion, each
k1 of re-ranking, and the best of both together) scores the labelled dev split, and the best one on dev is kept only
if choosing that way holds on data it was not chosen on: dev is resampled with replacement, the best candidate of
each resample is picked on the resample alone and scored against the base setting on the items left out of it. The
choice is kept when that out-of-bag gain is positive on average and in at least ``MIN_SHARE`` of the resamples;
otherwise the base setting stays. Picking the best of a dozen candidates on a thousand pairs finds a winner by chance
alone (a k1 of 5 best on dev and worse on test, issue 26): out of bag, such a chance winner gains nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import roc_auc_score

from ..config import AUTO, neighbours
from .similarity import Scoring

logger = logging.getLogger(__name__)

EXPAND_GRID = (1, 2, 3, 5, 10)  # neighbours averaged in: a person has a few to a few dozen images in a split
RERANK_GRID = (3, 5, 10, 20)  # k1: about the images one person has in a split (the paper's 20 for re-id)
RESAMPLES = 100
MIN_SHARE = 0.7  # out-of-bag gain positive in at least this share of the resamples
SEED = 0  # resampling is seeded: the same embeddings always choose the same scoring


class Outcome(Protocol):
    """One candidate's dev result: a score (higher is better) on any subset of the dev items."""

    items: int

    def score(self, index: np.ndarray) -> float: ...


@dataclass(frozen=True)
class ScoringSetting:
    """``verify.expand`` and ``verify.rerank`` as given: a number each, or ``auto`` (chosen on dev)."""

    expand: int | str = AUTO
    rerank: int | str = AUTO

    def __post_init__(self) -> None:
        neighbours(self.expand, "expand"), neighbours(self.rerank, "rerank")

    @property
    def chosen_on_dev(self) -> bool:
        return AUTO in (self.expand, self.rerank)

    def base(self) -> Scoring:
        """What runs unless dev shows better: the fixed values, plain cosine for what is ``auto``."""
        return Scoring(neighbours(self.expand, "expand") or 0, neighbours(self.rerank, "rerank") or 0)

    def expand_options(self) -> tuple[int, ...]:
        fixed = neighbours(self.expand, "expand")
        return (0, *EXPAND_GRID) if fixed is None else (fixed,)

    def rerank_options(self) -> tuple[int, ...]:
        fixed = neighbours(self.rerank, "rerank")
        return (0, *RERANK_GRID) if fixed is None else (fixed,)


@dataclass
class Choice:
    """The scoring dev chose, its outcome, and the evidence, for verify.json and the log."""

    scoring: Scoring
    outcome: Any
    dev: dict[str, float] = field(default_factory=dict)  # each candidate's score on the whole of dev
    best: str = ""
    gain: float = 0.0  # mean out-of-bag gain of choosing on dev over the base setting
    share: float = 0.0  # share of resamples where that gain was positive
    reason: str = ""
    used: str = ""  # what scored, where it is more than the scoring (the dev photos in the gallery)

    def describe(self) -> str:
        return self.used or self.scoring.describe()

    def summary(self) -> dict[str, Any]:
        return {
            "chosen": self.describe(),
            "best_on_dev": self.best,
            "out_of_bag_gain": self.gain,
            "out_of_bag_positive_share": self.share,
            "resamples": RESAMPLES,
            "reason": self.reason,
            "dev": self.dev,
        }


def candidates(setting: ScoringSetting, outcome_of: Callable[[Scoring], Outcome]) -> dict[Scoring, Outcome]:
    """Each factor apart around the base, then the best of each together: a dozen scorings, not the full grid."""
    base = setting.base()
    tried = {base: outcome_of(base)}

    def best_of(options: list[Scoring]) -> Scoring:
        for scoring in options:
            if scoring not in tried:
                tried[scoring] = outcome_of(scoring)
        everything = np.arange(tried[base].items)
        return max(options, key=lambda s: tried[s].score(everything))

    expand = best_of([Scoring(k, base.rerank) for k in setting.expand_options()])
    rerank = best_of([Scoring(base.expand, k) for k in setting.rerank_options()])
    best_of([Scoring(expand.expand, rerank.rerank)])
    return tried


def choose(setting: ScoringSetting, outcome_of: Callable[[Scoring], Outcome], what: str) -> Choice:
    """The scoring to use: ``setting``'s fixed values, or the candidate dev chooses (``outcome_of`` scores one on
    the labelled dev items; ``what`` names its score for the log)."""
    base = setting.base()
    if not setting.chosen_on_dev:
        return Choice(base, outcome_of(base), reason="given")
    tried = candidates(setting, outcome_of)
    order = list(tried)  # the base first: on a tie the base stays
    everything = np.arange(tried[base].items)
    dev = np.array([tried[s].score(everything) for s in order])
    best = order[int(dev.argmax())]
    choice = Choice(base, tried[base], {s.describe(): float(v) for s, v in zip(order, dev, strict=True)})
    choice.best = best.describe()
    if best == base:
        choice.reason = "no candidate scored better on dev"
    else:
        choice.gain, choice.share = out_of_bag_gain(order, tried)
        if choice.gain > 0 and choice.share >= MIN_SHARE:
            choice.scoring, choice.outcome = best, tried[best]
            choice.reason = "better on dev, and choosing on dev held out of bag"
        else:
            choice.reason = "better on dev, but choosing on dev did not hold out of bag (noise)"
    logger.info(
        f"scoring chosen on dev: {choice.scoring.describe()} (best on dev: {choice.best}, {what} "
        f"{choice.dev[choice.best]:.4f} vs {choice.dev[base.describe()]:.4f} for {base.describe()}; out-of-bag gain "
        f"{choice.gain:+.4f}, positive in {choice.share:.0%} of {RESAMPLES} resamples)"
    )
    return choice


def out_of_bag_gain(order: list[Scoring], tried: dict[Scoring, Outcome]) -> tuple[float, float]:
    """Mean gain over the base (``order[0]``) of the candidate picked on each bootstrap resample, scored on the items
    that resample left out, and the share of resamples where it gained."""
    n = tried[order[0]].items
    rng = np.random.default_rng(SEED)
    gains = []
    for _ in range(RESAMPLES):
        sample = rng.integers(0, n, n)
        left_out = np.setdiff1d(np.arange(n), sample)
        if len(left_out) < 2:
            continue
        picked = max(order, key=lambda s: tried[s].score(sample))  # max keeps the first (the base) on ties
        gains.append(tried[picked].score(left_out) - tried[order[0]].score(left_out))
    gains = np.nan_to_num(np.array(gains), nan=0.0)  # a left-out set of one class scores nan: no evidence
    return (float(gains.mean()), float((gains > 0).mean())) if len(gains) else (0.0, 0.0)


def equal_error_rate(scores: np.ndarray, genuine: np.ndarray) -> float:
    """EER of ``score >= t`` deciding genuine, where false accepts and false rejects cross (nan without both
    kinds): a sort and two cumulative sums, fast enough to score thousands of resamples."""
    order = np.argsort(-scores, kind="stable")
    ordered, is_genuine = scores[order], genuine[order].astype(np.int64)
    positives, negatives = is_genuine.sum(), len(is_genuine) - is_genuine.sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    last_of_tie = np.append(ordered[1:] != ordered[:-1], True)
    false_accept = np.append(0, np.cumsum(1 - is_genuine)[last_of_tie]) / negatives
    false_reject = 1 - np.append(0, np.cumsum(is_genuine)[last_of_tie]) / positives
    crossing = int(np.argmin(np.abs(false_accept - false_reject)))
    return float((false_accept[crossing] + false_reject[crossing]) / 2)


def area_under_roc(scores: np.ndarray, genuine: np.ndarray) -> float:
    """ROC AUC of the scores for the genuine pairs (nan without both kinds, as ``equal_error_rate``)."""
    if genuine.all() or not genuine.any():
        return float("nan")
    return float(roc_auc_score(genuine, scores))


@dataclass
class PairOutcome:
    """Dev pair scores of one candidate; its score is the leaderboard's (higher is better): 1 - EER, or the ROC AUC
    where the term ranks by it (S22), so that the scoring is chosen for the metric that grades it."""

    scores: np.ndarray
    genuine: np.ndarray
    by_auc: bool = False  # the term ranks its pairs by ROC AUC (S22), not by the EER

    @property
    def items(self) -> int:
        return len(self.scores)

    def score(self, index: np.ndarray) -> float:
        if self.by_auc:
            return area_under_roc(self.scores[index], self.genuine[index])
        return 1.0 - equal_error_rate(self.scores[index], self.genuine[index])
