"""Scoring chosen on dev (verify.expand / verify.rerank: auto): a real gain is taken and holds on a report split of
the same people, a chance winner on noise is not, fixed values are not searched, and verify records the choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facenext.cli import main
from facenext.verification.choice import (
    PairOutcome,
    ScoringSetting,
    choose,
    equal_error_rate,
)
from facenext.verification.identity import IdentityOutcome
from facenext.verification.metrics import genuine_impostor, roc
from facenext.verification.similarity import Scoring

from .conftest import assert_user_error, facenext, noisy_clusters


def pair_list(owners: np.ndarray, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half genuine pairs (two images of one person), half random ones, and whether each is genuine."""
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(owners), pairs), rng.integers(0, len(owners), pairs)
    for i in range(pairs // 2):
        same = np.flatnonzero(owners == owners[first[i]])
        second[i] = rng.choice(same[same != first[i]])
    return first, second, (owners[first] == owners[second]).astype(int)


def pair_choice(feats, first, second, genuine, setting=ScoringSetting()):
    return choose(setting, lambda s: PairOutcome(s.pairs(feats, first, second), genuine), "1 - EER")


def test_a_real_gain_is_chosen_on_dev_and_holds_on_a_report_split():
    # people with ten images each: their neighbours are the same person, so expansion and re-ranking truly help
    feats, owners = noisy_clusters(30, 10, 1.0)
    dev = pair_list(owners, 600, seed=1)
    choice = pair_choice(feats, *dev)
    assert choice.scoring != Scoring(), choice.summary()
    assert choice.gain > 0.005 and choice.share >= 0.9
    report_feats, report_owners = noisy_clusters(30, 10, 1.0, seed=5)  # other people, never chosen on
    first, second, genuine = pair_list(report_owners, 600, seed=6)
    chosen_eer = equal_error_rate(choice.scoring.pairs(report_feats, first, second), genuine)
    plain_eer = equal_error_rate(Scoring().pairs(report_feats, first, second), genuine)
    assert chosen_eer < plain_eer - 0.01


def test_a_chance_winner_on_noise_keeps_plain_cosine():
    feats, owners = noisy_clusters(20, 8, 1.0)
    first, second, genuine = pair_list(owners, 400, seed=1)
    chance_winners = 0
    for seed in range(4):
        shuffled = np.random.default_rng(seed).permutation(genuine)  # labels that no scoring can predict
        choice = pair_choice(feats, first, second, shuffled)
        assert choice.scoring == Scoring(), choice.summary()
        if choice.best != Scoring().describe():  # some candidate won on dev by chance, and was refused
            chance_winners += 1
            assert "did not hold" in choice.reason and choice.share < 0.7
    assert chance_winners >= 2


def test_fixed_values_are_used_as_given_and_auto_searches_only_what_is_auto():
    feats, owners = noisy_clusters(12, 6, 0.8)
    first, second, genuine = pair_list(owners, 200, seed=1)
    scored = []

    def outcome_of(scoring):
        scored.append(scoring)
        return PairOutcome(scoring.pairs(feats, first, second), genuine)

    assert choose(ScoringSetting(3, 0), outcome_of, "1 - EER").scoring == Scoring(3, 0) and scored == [Scoring(3, 0)]
    scored.clear()
    choose(ScoringSetting("auto", 0), outcome_of, "1 - EER")
    assert {s.rerank for s in scored} == {0} and len({s.expand for s in scored}) > 3


def test_identity_matching_chooses_on_the_accuracy_at_the_tuned_threshold():
    feats, owners = noisy_clusters(20, 9, 1.0)
    gallery_rows = np.array([np.flatnonzero(owners == p)[0] for p in range(15)])  # five people are unknown
    queries = np.setdiff1d(np.arange(len(owners)), gallery_rows)
    names = [f"n{p:06d}" for p in range(15)]
    truth = np.array([names[o] if o < 15 else "n000000" for o in owners[queries]])
    both = np.concatenate([feats[gallery_rows], feats[queries]])

    def outcome_of(scoring):
        similarity = scoring.block(both, np.arange(15, len(both)), np.arange(15))
        return IdentityOutcome(similarity, truth, names, "n000000")

    choice = choose(ScoringSetting(), outcome_of, "dev accuracy")
    plain = outcome_of(Scoring()).score(np.arange(len(truth)))
    assert choice.dev[Scoring().describe()] == pytest.approx(plain)
    assert choice.scoring != Scoring() and choice.outcome.score(np.arange(len(truth))) > plain + 0.05


def test_the_fast_eer_agrees_with_the_roc_one():
    rng = np.random.default_rng(3)
    for _ in range(5):
        genuine = rng.random(400) < 0.4
        scores = rng.normal(size=400) + genuine * rng.uniform(0, 2)
        expected = roc(*genuine_impostor(scores[genuine], scores[~genuine])).eer
        assert equal_error_rate(scores, genuine) == pytest.approx(expected, abs=0.005)
    assert np.isnan(equal_error_rate(scores, np.zeros(400, dtype=bool)))


def test_verify_records_the_choice_and_refuses_a_setting_that_is_no_count(trained_run, f24_run, tmp_path):
    out = tmp_path / "ver"
    # verify.expand and verify.rerank: auto, against the known photos (the dev photos' gallery is plain cosine)
    assert main(["verify", str(trained_run), "--out", str(out), "--gallery", "known"]) == 0
    summary = json.loads((out / "verify.json").read_text())
    record = summary["scoring"]
    assert record["chosen"] == Scoring(summary["expand"], summary["rerank"]).describe()
    assert len(record["dev"]) >= 8 and record["reason"]
    pairs = tmp_path / "pairs"
    assert main(["verify", str(f24_run), "--out", str(pairs), "--expand", "auto", "--rerank", "0"]) == 0
    record = json.loads((pairs / "verify.json").read_text())["scoring"]
    assert not any("re-ranking" in name for name in record["dev"]) and len(record["dev"]) > 3
    assert_user_error(facenext("verify", trained_run, "--out", out, "--expand", "some"), "--expand")
    result = facenext("verify", trained_run, "--out", out, "--rerank", "-3")
    assert_user_error(result, "--rerank -3", "auto")
