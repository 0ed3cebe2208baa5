"""`facenext ensemble --verification`: the runs' saved verification scores averaged into the verification
competition's submission, on real verify outputs (F23 identity matching, F24 pairs) and on constructed scores whose
average must fix what each run gets wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facenext.cli import main
from facenext.config import config_from_dict
from facenext.data.layout import find_layout, list_classes, list_images
from facenext.data.sample import write_sample_competition
from facenext.ensemble import ensemble_verification
from facenext.errors import UserError
from facenext.run import RunDir
from facenext.submission import verification_ids
from facenext.verification.identity import IdentityScores

from .conftest import assert_user_error, facenext


def verified(run: Path, predictions: Path, *flags: str) -> Path:
    """``facenext verify`` of ``run`` into ``predictions/<run name>``, as `ensemble` looks for it."""
    out = predictions / run.name
    assert main(["verify", str(run), "--out", str(out), *flags]) == 0
    return out


def test_an_identity_ensemble_of_one_run_twice_is_that_run(trained_run, tmp_path):
    single = verified(trained_run, tmp_path / "p")
    out = tmp_path / "verification_submission.csv"
    args = ["ensemble", str(trained_run), str(trained_run), "--verification", "--predictions", str(tmp_path / "p")]
    assert main([*args, "--out", str(out)]) == 0
    assert pd.read_csv(out, dtype=str).equals(pd.read_csv(single / "verification_submission.csv", dtype=str))
    summary, alone = json.loads(out.with_suffix(".json").read_text()), json.loads((single / "verify.json").read_text())
    assert summary["dev_accuracy"] == pytest.approx(alone["dev_accuracy"], abs=1e-6)
    assert summary["threshold"] == pytest.approx(alone["threshold"], abs=1e-6)
    assert summary["scoring"] == alone["scoring"]["chosen"] and summary["task"] == "verification"


def test_a_pair_ensemble_of_one_run_twice_is_that_run(f24_run, tmp_path):
    single = verified(f24_run, tmp_path / "p")
    out = tmp_path / "pairs.csv"
    args = ["ensemble", str(f24_run), str(f24_run), "--verification", "--predictions", str(tmp_path / "p")]
    assert main([*args, "--out", str(out)]) == 0
    frame, alone = pd.read_csv(out), pd.read_csv(single / "verification_submission.csv")
    assert list(frame.columns) == ["ID", "Label"] and np.allclose(frame["Label"], alone["Label"], atol=1e-6)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["dev_eer"] == pytest.approx(json.loads((single / "verify.json").read_text())["dev_eer"], abs=1e-6)
    assert summary["dev_score"] == pytest.approx(1 - summary["dev_eer"])  # F24 ranks by EER, not by the AUC beside it


# ---------------------------------------------------------------------------------------------------------------
# Constructed scores: two runs that each misplace a different half of the known faces
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def f23(tmp_path) -> Path:
    data = tmp_path / "data"
    write_sample_competition(data, "f23", identities=6, images_per_identity=6, size=16)
    return data


def fake_run(runs: Path, name: str, data: Path, term: str = "f23") -> Path:
    """A run folder as training leaves it (config, classes, summary), without its weights."""
    folder = RunDir(runs / name)
    folder.write_config(config_from_dict({"data": {"root": str(data), "term": term}}))
    folder.write_classes(list_classes(find_layout(data, term).train))
    folder.write_summary({"parameters": 1_000_000})
    return runs / name


def half_wrong(truth: np.ndarray, names: list[str], half: int) -> np.ndarray:
    """Similarities that match every unknown face below 0.2 and every known face to its person at 0.6, except the
    known faces of one ``half`` (alternate ones), which score 0.7 with the next person: alone, wrong on those."""
    column = {name: i for i, name in enumerate(names)}
    sims = np.full((len(truth), len(names)), 0.1, dtype=np.float32)
    known = [i for i, t in enumerate(truth) if t in column]
    for n, i in enumerate(known):
        sims[i, column[truth[i]]] = 0.6
        if n % 2 == half:
            sims[i, (column[truth[i]] + 1) % len(names)] = 0.7
    return sims


def saved_scores(
    truth: np.ndarray, names: list[str], half: int, ids: list[str], scoring: str = "plain cosine"
) -> IdentityScores:
    """A run's `verify` output with ``half_wrong`` scores on dev and on test (whose faces repeat the dev faces')."""
    test = half_wrong(np.resize(truth, len(ids)), names, half)
    return IdentityScores(names, scoring, half_wrong(truth, names, half), truth, test, np.array(ids))


def test_an_identity_ensemble_fixes_what_each_run_gets_wrong(f23, tmp_path):
    layout = find_layout(f23, "f23")
    names, files = list_classes(layout.known), list_images(layout.unknown_dev)
    truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"].to_numpy()
    assert "n000000" in truth and len(truth) == len(files)
    ids, _ = verification_ids(layout)
    test_truth = np.resize(truth, len(ids))  # the test faces, as saved_scores makes them
    runs = [fake_run(tmp_path / "runs", name, f23) for name in ("a", "b")]
    for half, run in enumerate(runs):
        saved_scores(truth, names, half, ids).save(tmp_path / "p" / run.name)
    out = tmp_path / "ver.csv"
    summary = ensemble_verification(runs, out, tmp_path / "p")
    assert max(summary["dev_accuracy_runs"]) < 0.8
    assert summary["dev_accuracy"] == 1.0 and 0.1 < summary["threshold"] <= 0.6
    written = pd.read_csv(out, dtype=str)
    assert written["id"].tolist() == ids and written["label"].tolist() == test_truth.tolist()


def three_runs(data: Path, tmp_path: Path) -> tuple[list[str], np.ndarray, list[str], list[Path]]:
    """The F23 competition's known identities, unknown_dev labels and test ids, and three run folders on it."""
    layout = find_layout(data, "f23")
    truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"].to_numpy()
    runs = [fake_run(tmp_path / "runs", name, data) for name in ("a", "b", "c")]
    return list_classes(layout.known), truth, verification_ids(layout)[0], runs


def test_verification_ensembles_refuse_what_they_cannot_average(f23, tmp_path):
    names, truth, ids, runs = three_runs(f23, tmp_path)
    saved_scores(truth, names, 0, ids).save(tmp_path / "p" / "a")
    saved_scores(truth, names, 1, ids, "re-ranking k1=10").save(tmp_path / "p" / "b")
    out = tmp_path / "ver.csv"
    with pytest.raises(UserError, match="re-ranking k1=10"):
        ensemble_verification(runs[:2], out, tmp_path / "p")
    with pytest.raises(UserError, match="facenext verify"):
        ensemble_verification([runs[0], runs[2]], out, tmp_path / "p")
    saved_scores(truth[:-1], names, 1, ids).save(tmp_path / "p" / "c")
    with pytest.raises(UserError, match="unknown_dev labels"):
        ensemble_verification([runs[0], runs[2]], out, tmp_path / "p")
    assert not out.exists()
    fitted = facenext("ensemble", runs[0], "--verification", "--weights", "fit", "--out", out)
    assert_user_error(fitted, "equal weights")
    assert not out.exists()


def test_f26_ensembles_both_tasks_in_one_file_not_with_verification(tmp_path):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=6, size=16)
    run = fake_run(tmp_path / "runs", "r", data, "f26")
    with pytest.raises(UserError, match="without --verification"):
        ensemble_verification([run], tmp_path / "x.csv", tmp_path / "p")


def test_an_identity_ensemble_without_dev_labels_matches_every_test_face(f23, tmp_path):
    layout = find_layout(f23, "f23")
    names = list_classes(layout.known)
    ids, _ = verification_ids(layout)
    truth = np.resize(np.array(names), len(ids))  # every test face of a known person
    runs = [fake_run(tmp_path / "runs", name, f23) for name in ("a", "b")]
    for half, run in enumerate(runs):
        sims = half_wrong(truth, names, half) - 0.5  # low scores: a tuned threshold could reject them, none is tuned
        IdentityScores(names, "plain cosine", test=sims, test_ids=np.array(ids)).save(tmp_path / "p" / run.name)
    summary = ensemble_verification(runs, tmp_path / "ver.csv", tmp_path / "p")
    assert "dev_accuracy" not in summary
    assert pd.read_csv(tmp_path / "ver.csv", dtype=str)["label"].tolist() == truth.tolist()


def test_verification_ensembles_refuse_runs_of_other_identities_or_without_dev_labels(f23, tmp_path, monkeypatch):
    names, truth, ids, runs = three_runs(f23, tmp_path)
    saved_scores(truth, names, 0, ids).save(tmp_path / "p" / "a")
    other = saved_scores(truth, names, 1, ids)
    other.names = [*names[1:], names[0]]
    other.save(tmp_path / "p" / "b")
    no_labels = saved_scores(truth, names, 1, ids)
    no_labels.dev = no_labels.dev_truth = None
    no_labels.save(tmp_path / "p" / "c")
    monkeypatch.chdir(tmp_path)  # the default --out is relative: submissions/verification_submission.csv
    assert_user_error(
        facenext("ensemble", runs[0], runs[1], "--verification", "--predictions", "p"), "known identities"
    )
    assert_user_error(facenext("ensemble", runs[0], runs[2], "--verification", "--predictions", "p"), "unknown_dev")
    assert not (tmp_path / "submissions").exists()
    assert facenext("ensemble", runs[0], runs[0], "--verification", "--predictions", "p").returncode == 0
    assert (tmp_path / "submissions" / "verification_submission.csv").is_file()


def test_an_s22_pair_ensemble_is_scored_by_roc_auc_under_its_header(tmp_path):
    from facenext.combined import save_pair_scores

    data = tmp_path / "data"
    write_sample_competition(data, "s22", identities=4, images_per_identity=6, size=16)
    layout = find_layout(data, "s22")
    labels = pd.read_csv(layout.val_pairs)["gt"].astype(int).to_numpy()
    tests = len(pd.read_csv(layout.test_pairs))
    rng = np.random.default_rng(0)
    runs = [fake_run(tmp_path / "runs", name, data, "s22") for name in ("a", "b")]
    for run in runs:
        save_pair_scores(tmp_path / "p" / run.name, labels + rng.normal(size=len(labels)), labels, np.zeros(tests), "x")
    summary = ensemble_verification(runs, tmp_path / "pairs.csv", tmp_path / "p")
    assert summary["dev_score"] == summary["dev_auc"] and 0.5 < summary["dev_auc"] <= 1
    assert list(pd.read_csv(tmp_path / "pairs.csv").columns) == ["id", "match"]
