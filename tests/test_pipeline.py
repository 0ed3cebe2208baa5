"""The stages run for real on the tiny sample competition: train, resume, predict, ensemble, verify."""

import json
import shutil

import numpy as np
import pandas as pd
from sklearn.metrics import det_curve, roc_auc_score

from facenext.cli import main
from facenext.data.layout import find_layout, list_classes, list_images
from facenext.verification.identity import best_threshold
from facenext.verification.metrics import pair_metrics

from .conftest import data_root, train_args


def test_training_writes_the_run_folder_and_learns(trained_run):
    for name in ("config.yaml", "classes.json", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (trained_run / name).is_file(), name
    metrics = pd.read_csv(trained_run / "metrics.csv")
    assert list(metrics.columns[:8]) == [
        "epoch", "train_loss", "train_acc", "dev_loss", "dev_acc", "lr", "images_per_s", "epoch_s",
    ]  # fmt: skip
    assert metrics["epoch"].tolist() == list(range(1, 21))
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0] * 0.7
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["best_dev_acc"] >= 0.5, "8 identities: chance is 0.125"


def test_rerunning_a_finished_run_trains_nothing_and_extending_resumes(trained_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    config = json.loads((trained_run / "summary.json").read_text())
    args = train_args(data_root(trained_run), run)
    assert main([*args, "train.epochs=20"]) == 0
    assert "epoch 21 of 20" in capsys.readouterr().out
    assert len(pd.read_csv(run / "metrics.csv")) == 20
    assert main([*args, "train.epochs=21"]) == 0
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(1, 22))
    assert config["epochs"] == 20


def test_predict_writes_a_submission_in_the_competition_format(trained_run, sample, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), "--out", str(out)]) == 0
    layout = find_layout(sample)
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert list(submission.columns) == ["id", "label"]
    assert submission["id"].tolist() == list_images(layout.test)
    assert submission["label"].between(0, 7).all()
    truth = pd.read_csv(sample / "answers" / "classification_test.csv", dtype={"id": str})
    assert (submission["label"] == truth["label"]).mean() >= 0.5

    with np.load(out / "test_logits.npz") as logits:
        assert logits["logits"].shape == (len(submission), 8) and logits["logits"].dtype == np.float16
        assert logits["classes"].tolist() == list_classes(layout.train)

    assert main(["predict", str(trained_run), "--split", "dev", "--out", str(out), "--tta", "none"]) == 0
    assert json.loads((out / "predict_dev.json").read_text())["dev_acc"] >= 0.5


def test_ensemble_of_runs_writes_one_submission(trained_run, tmp_path):
    preds = tmp_path / "subs"
    assert main(["predict", str(trained_run), "--out", str(preds / trained_run.name)]) == 0
    out = tmp_path / "submission.csv"
    assert main(["ensemble", str(trained_run), str(trained_run), "--out", str(out), "--predictions", str(preds)]) == 0
    single = pd.read_csv(preds / trained_run.name / "submission.csv")
    assert pd.read_csv(out).equals(single), "an ensemble of one model twice is that model"


def test_verify_matches_identities_with_a_tuned_threshold(trained_run, sample, tmp_path):
    assert main(["verify", str(trained_run), "--out", str(tmp_path)]) == 0
    layout = find_layout(sample)
    summary = json.loads((tmp_path / "verify.json").read_text())
    assert 0 <= summary["dev_accuracy"] <= 1 and summary["dev_accuracy"] >= summary["dev_accuracy_no_threshold"]
    submission = pd.read_csv(tmp_path / "verification_submission.csv", dtype=str)
    assert submission["id"].tolist() == [str(i) for i in range(len(list_images(layout.unknown_test)))]
    assert set(submission["label"]) <= set(list_classes(layout.known)) | {"n000000"}


def test_verify_scores_pairs_on_the_f24_layout(f24_run, sample_f24, tmp_path):
    assert main(["verify", str(f24_run), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "verify.json").read_text())
    assert 0 <= summary["dev_eer"] <= 1 and 0 <= summary["dev_auc"] <= 1
    submission = pd.read_csv(tmp_path / "verification_submission.csv")
    layout = find_layout(sample_f24)
    assert list(submission.columns) == ["ID", "Label"]
    assert len(submission) == len(layout.test_pairs.read_text().splitlines())
    assert submission["Label"].between(-1.0001, 1.0001).all()


def test_pair_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(labels * 1.5, 1.0)
    ours = pair_metrics(scores, labels)
    fpr, fnr, _ = det_curve(labels, scores)
    assert abs(ours["eer"] - fpr[np.argmin(np.abs(fpr - fnr))]) < 0.005
    assert ours["auc"] == roc_auc_score(labels, scores)
    assert 0.2 < ours["eer"] < 0.3  # two unit normals 1.5 apart: EER = Phi(-0.75) = 0.227


def test_threshold_sends_weak_matches_to_no_match():
    similarity = np.array([0.9, 0.8, 0.3, 0.2])
    predicted = np.array(["a", "b", "a", "b"])
    truth = np.array(["a", "b", "n000000", "n000000"])
    threshold, accuracy = best_threshold(similarity, predicted, truth, "n000000")
    assert accuracy == 1.0 and 0.3 < threshold < 0.8


def test_a_final_run_trains_on_the_dev_photos_too_and_says_so(sample, tmp_path, capsys):
    layout = find_layout(sample)
    train = sum(len(list_images(layout.train / c)) for c in list_classes(layout.train))
    dev = sum(len(list_images(layout.dev / c)) for c in list_classes(layout.dev))
    run = tmp_path / "final"
    assert main(train_args(sample, run, "train.epochs=1", "data.train_on_dev=true")) == 0
    out = capsys.readouterr().out
    assert f"training on {dev} dev photos too" in out and f"{train + dev} train images" in out
    assert json.loads((run / "summary.json").read_text())["train_on_dev"] is True
    # a competition without a dev split is refused in one line, before a run folder is made
    bare = tmp_path / "no_dev"
    shutil.copytree(sample, bare)
    shutil.rmtree(bare / layout.dev.relative_to(sample))
    assert main(train_args(bare, tmp_path / "refused", "train.epochs=1", "data.train_on_dev=true")) == 2
    assert "no dev split to train on" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
