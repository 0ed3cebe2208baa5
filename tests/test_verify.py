"""Verification: metrics against scikit-learn and brute force, the embedding cache, figures, chunked pair scoring."""

from __future__ import annotations

import json
import os
from math import erf, sqrt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import det_curve, roc_auc_score, roc_curve

from facenext.cli import main
from facenext.data.layout import find_layout, list_images
from facenext.verification.expansion import expand
from facenext.verification.identity import threshold_curve
from facenext.verification.metrics import accuracy_curve, kfold_accuracy, pair_metrics
from facenext.verification.pairs import read_pairs
from facenext.verification.similarity import score_pairs

from .conftest import ROOT, TINY_MODEL, TINY_TRAIN, assert_user_error, facenext, noisy_clusters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _phi(x: float) -> float:
    return 0.5 * (1 + erf(x / sqrt(2)))


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0.01, f"{path} is blank"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_and_auc_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(labels * (0.5 + seed), 1.0), 2)  # rounding makes ties
    ours = pair_metrics(scores, labels)
    fpr, fnr, _ = det_curve(labels, scores)
    i = int(np.argmin(np.abs(fpr - fnr)))
    step = 2 / min(labels.sum(), (1 - labels).sum())  # one sample of either class moves the curve this much
    assert abs(ours["eer"] - (fpr[i] + fnr[i]) / 2) < step
    assert ours["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # AUC by brute force: P(genuine > impostor) + P(tie) / 2
    g, n = scores[labels == 1], scores[labels == 0]
    assert ours["auc"] == pytest.approx((g[:, None] > n).mean() + 0.5 * (g[:, None] == n).mean(), abs=1e-12)
    # the EER threshold splits both error rates near the EER
    far = (n >= ours["eer_threshold"]).mean()
    frr = (g < ours["eer_threshold"]).mean()
    assert abs(far - ours["eer"]) < 0.02 and abs(frr - ours["eer"]) < 0.02


def test_eer_of_two_normals_is_known():
    rng = np.random.default_rng(5)
    labels = np.repeat([1, 0], 20000)
    scores = rng.normal(labels * 2.0, 1.0)
    ours = pair_metrics(scores, labels)
    assert ours["eer"] == pytest.approx(_phi(-1.0), abs=0.006)  # equal unit normals 2 apart cross at 1
    assert ours["eer_threshold"] == pytest.approx(1.0, abs=0.05)
    assert ours["auc"] == pytest.approx(_phi(2.0 / sqrt(2)), abs=0.005)
    assert ours["tar_at_far_0.01"] == pytest.approx(1 - _phi(2.326 - 2.0), abs=0.02)


def test_tar_at_far_on_a_constructed_case():
    # 1000 impostors at 0.000 ... 0.999; FAR 1e-3 accepts one (0.999), FAR 1e-2 accepts ten (0.990 and above)
    impostor = np.arange(1000) / 1000
    genuine = np.concatenate([np.full(30, 0.9995), np.full(20, 0.9955), np.full(50, 0.5)])
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(100, int), np.zeros(1000, int)])
    ours = pair_metrics(scores, labels)
    assert ours["tar_at_far_0.001"] == pytest.approx(0.30)
    assert ours["tar_at_far_0.01"] == pytest.approx(0.50)


def test_accuracy_curve_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels, 1.0), 1)
    thresholds, accuracy = accuracy_curve(scores, labels)
    assert np.all(np.diff(thresholds) > 0)
    brute = ((scores[None, :] >= thresholds[:, None]) == labels.astype(bool)).mean(1)
    np.testing.assert_allclose(accuracy, brute)
    assert pair_metrics(scores, labels)["best_accuracy"] == pytest.approx(brute.max())


def test_identity_threshold_curve_matches_brute_force():
    rng = np.random.default_rng(4)
    truth = rng.choice(["a", "b", "c", "n000000"], 200)
    predicted = np.where(rng.random(200) < 0.6, truth, rng.choice(["a", "b", "c"], 200))
    similarity = np.round(rng.random(200) + (predicted == truth) * 0.3, 2)
    thresholds, accuracy = threshold_curve(similarity, predicted, truth, "n000000")
    accept = similarity[None, :] >= thresholds[:, None]
    brute = np.where(accept, predicted == truth, truth == "n000000").mean(1)
    np.testing.assert_allclose(accuracy, brute)
    assert accuracy[0] == pytest.approx((predicted == truth).mean())  # lowest threshold accepts every match
    assert accuracy[-1] == pytest.approx((truth == "n000000").mean())  # highest rejects all


def test_ten_fold_accuracy():
    rng = np.random.default_rng(6)
    labels = np.repeat([1, 0], 3000)
    separable = np.where(labels == 1, rng.uniform(0.6, 1.0, 6000), rng.uniform(-1.0, 0.4, 6000))
    assert kfold_accuracy(separable, labels) == (1.0, 0.0)
    overlapping = rng.normal(labels * 1.5, 1.0)
    mean, std = kfold_accuracy(overlapping, labels)
    assert mean == pytest.approx(_phi(0.75), abs=0.015)  # best threshold halfway: accuracy Phi(0.75) = 0.773
    assert 0 < std < 0.05
    assert mean <= pair_metrics(overlapping, labels)["best_accuracy"] + 1e-9  # unseen folds can't beat in-sample
    noise_mean, _ = kfold_accuracy(rng.normal(size=6000), labels)
    assert noise_mean == pytest.approx(0.5, abs=0.04)


def test_six_pairs_by_hand():
    # sorted scores 0.9 G, 0.8 G, 0.7 I, 0.4 G, 0.3 I, 0.2 I: accepting >= 0.7 rejects one genuine of three and
    # accepts one impostor of three, so FRR = FAR = 1/3 exactly there
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    labels = np.array([1, 1, 1, 0, 0, 0])
    ours = pair_metrics(scores, labels)
    assert ours["eer"] == pytest.approx(1 / 3) and ours["eer_threshold"] == pytest.approx(0.7)
    assert ours["auc"] == pytest.approx(8 / 9)  # 0.4 loses to 0.7 only: 8 of 9 genuine-impostor orders right
    assert ours["tar_at_far_0.001"] == ours["tar_at_far_0.01"] == pytest.approx(2 / 3)  # 0.9, 0.8 before any impostor
    # 5 of 6 right between 0.3 and 0.4 or between 0.7 and 0.8; ties go to the lower threshold
    assert ours["best_accuracy"] == pytest.approx(5 / 6) and ours["best_threshold"] == pytest.approx(0.35)
    assert "10fold_accuracy" not in ours  # fewer pairs than folds


def test_eer_between_two_roc_points_is_interpolated():
    # a genuine and an impostor tie at 0.5: the ROC jumps diagonally from (FAR 0, TAR 1/2) to (1/2, 1), and the
    # false-reject rate meets the false-accept rate halfway, at 1/4, at a threshold halfway from 0.9 to 0.5
    ours = pair_metrics(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0]))
    assert ours["eer"] == pytest.approx(0.25) and ours["eer_threshold"] == pytest.approx(0.7)
    assert ours["auc"] == pytest.approx(0.875)  # 3 orders right and one tie of 4


def test_threshold_sweep_agrees_with_scikit_learn_roc_curve():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(labels, 1.0), 1)  # many ties
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    sklearn = (tpr * positives + (1 - fpr) * negatives) / len(labels)  # accuracy of score >= t, t descending
    np.testing.assert_array_equal(thresholds[1:], np.unique(scores)[::-1])  # "above all", then each distinct score
    ours_thresholds, ours = accuracy_curve(scores, labels)
    # ours ascend: just below each distinct score, then above all
    assert np.all(ours_thresholds[:-1] < np.unique(scores)) and ours_thresholds[-1] > scores.max()
    np.testing.assert_allclose(ours[::-1], sklearn)


def test_chunked_pair_scoring_equals_the_direct_computation():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(500, 64)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    first, second = rng.integers(0, 500, 10_007), rng.integers(0, 500, 10_007)
    direct = (feats @ feats.T)[first, second]
    for chunk in (1, 7, 4096, 1 << 20):
        np.testing.assert_allclose(score_pairs(feats, first, second, chunk=chunk), direct, atol=1e-6)


def test_identity_verify_caches_embeddings_and_writes_figures(trained_run, sample, tmp_path):
    out = tmp_path / "ver"
    assert main(["verify", str(trained_run), "--out", str(out)]) == 0
    first = json.loads((out / "verify.json").read_text())
    layout = find_layout(sample)
    known = sum(len(list_images(p)) for p in layout.known.iterdir() if p.is_dir())
    images = known + len(list_images(layout.unknown_dev)) + len(list_images(layout.unknown_test))
    assert first["embedded_images"] == images
    caches = sorted(out.glob("embeddings_*.npz"))
    assert [p.name for p in caches] == [
        "embeddings_known.npz",
        "embeddings_unknown_dev.npz",
        "embeddings_unknown_test.npz",
    ]
    with np.load(out / "embeddings_known.npz") as data:
        assert len(data["paths"]) == known
        np.testing.assert_allclose(np.linalg.norm(data["vectors"], axis=1), 1.0, atol=1e-3)
    mtimes = {p: p.stat().st_mtime_ns for p in caches}

    # the accuracy-vs-threshold curve: thresholds ascending, its ends and maximum are the reported numbers
    curve = pd.read_csv(first["threshold_curve_csv"])
    assert list(curve.columns) == ["threshold", "accuracy"] and curve["threshold"].is_monotonic_increasing
    assert curve["threshold"].is_unique and curve["accuracy"].between(0, 1).all()
    assert curve["accuracy"].max() == pytest.approx(first["dev_accuracy"])
    assert curve["accuracy"].iloc[0] == pytest.approx(first["dev_accuracy_no_threshold"])
    assert curve.loc[curve["accuracy"].idxmax(), "threshold"] == pytest.approx(first["threshold"])
    assert 0 <= first["dev_pair_eer"] <= 1 and 0 <= first["dev_pair_auc"] <= 1
    for key in ("threshold_curve_png", "roc_png", "scores_png"):
        _assert_png(Path(first[key]))

    # second run: everything from the cache, same numbers, cache files untouched
    assert main(["verify", str(trained_run), "--out", str(out)]) == 0
    second = json.loads((out / "verify.json").read_text())
    assert second["embedded_images"] == 0
    assert {p: p.stat().st_mtime_ns for p in caches} == mtimes
    for key in ("dev_accuracy", "threshold", "dev_accuracy_no_threshold", "dev_pair_eer"):
        assert second[key] == first[key]

    # --no-cache embeds all again; new weights (another mtime) invalidate the cache
    assert main(["verify", str(trained_run), "--out", str(out), "--no-cache"]) == 0
    assert json.loads((out / "verify.json").read_text())["embedded_images"] == images
    weights = trained_run / "best.pt"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert main(["verify", str(trained_run), "--out", str(out)]) == 0
        assert json.loads((out / "verify.json").read_text())["embedded_images"] == images
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # another TTA is another cache
    assert main(["verify", str(trained_run), "--out", str(out), "--tta", "none"]) == 0
    assert json.loads((out / "verify.json").read_text())["embedded_images"] == images


def test_pair_verify_reports_the_field_metrics(f24_run, sample_f24, tmp_path):
    out = tmp_path / "ver"
    assert main(["verify", str(f24_run), "--out", str(out)]) == 0
    summary = json.loads((out / "verify.json").read_text())
    layout = find_layout(sample_f24)
    val = read_pairs(layout.val_pairs, labelled=True)
    assert summary["dev_pairs"] == len(val) and summary["embedded_images"] > 0
    # recompute the scores from the cached embeddings, independently of the scoring code
    with np.load(out / "embeddings_dev.npz") as data:
        vectors = dict(zip(data["paths"].tolist(), data["vectors"], strict=True))
    base = layout.ver_images  # bare names relative to ver_data/, as the S25-on files name them
    pairs = zip(val["img1"], val["img2"], strict=True)
    scores = np.array([vectors[str(base / a)] @ vectors[str(base / b)] for a, b in pairs])
    labels = val["label"].astype(int).to_numpy()
    assert summary["dev_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)
    fpr, fnr, _ = det_curve(labels, scores)
    i = int(np.argmin(np.abs(fpr - fnr)))
    assert abs(summary["dev_eer"] - (fpr[i] + fnr[i]) / 2) <= 2 / min(labels.sum(), (1 - labels).sum())
    for key in ("tar_at_far_0.001", "tar_at_far_0.01", "best_accuracy", "10fold_accuracy"):
        assert 0 <= summary[f"dev_{key}"] <= 1
    assert summary["dev_tar_at_far_0.001"] <= summary["dev_tar_at_far_0.01"]
    assert summary["dev_best_accuracy"] >= max(labels.mean(), 1 - labels.mean())  # at least "all one class"
    for key in ("roc_png", "scores_png"):
        _assert_png(Path(summary[key]))
    submission = pd.read_csv(out / "verification_submission.csv")
    assert list(submission.columns) == ["ID", "Label"]
    assert len(submission) == len(read_pairs(layout.test_pairs, labelled=False))
    assert submission["Label"].between(-1.0001, 1.0001).all()
    assert main(["verify", str(f24_run), "--out", str(out)]) == 0
    assert json.loads((out / "verify.json").read_text())["embedded_images"] == 0
    assert pd.read_csv(out / "verification_submission.csv").equals(submission)


def test_s22_pairs_from_csv_files_are_scored_into_id_match(tmp_path):
    from facenext.data.sample import write_sample_competition

    data = tmp_path / "s22"
    write_sample_competition(data, "s22", identities=4, images_per_identity=8, size=48, seed=3)
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "demo.yaml"), "--out", str(run), f"data.root={data}"]
    assert main([*args, "train.epochs=1", *TINY_MODEL, *TINY_TRAIN]) == 0
    assert main(["verify", str(run), "--out", str(tmp_path / "verify"), "--expand", "auto", "--rerank", "auto"]) == 0
    summary = json.loads((tmp_path / "verify" / "verify.json").read_text())
    dev = pd.read_csv(find_layout(data).val_pairs)
    assert summary["dev_pairs"] == len(dev) and 0 <= summary["dev_auc"] <= 1
    # S22 ranks by AUC: candidates are scored by it, so the chosen one's dev score is the AUC it reaches, not 1 - EER
    scoring = summary["scoring"]
    assert len(scoring["dev"]) > 3 and scoring["dev"][scoring["chosen"]] == pytest.approx(summary["dev_auc"], abs=1e-9)
    submission = pd.read_csv(tmp_path / "verify" / "verification_submission.csv")
    assert list(submission.columns) == ["id", "match"]
    assert len(submission) == len(pd.read_csv(find_layout(data).test_pairs))


def nearest_neighbour_accuracy(feats, owners):
    similarity = feats @ feats.T
    np.fill_diagonal(similarity, -np.inf)
    return float((owners[similarity.argmax(1)] == owners).mean())


def test_query_expansion_pulls_each_person_together_and_is_chunk_independent():
    feats, owners = noisy_clusters(people=20, images=12, noise=1.2)
    expanded = expand(feats, 5)
    np.testing.assert_allclose(np.linalg.norm(expanded, axis=1), 1.0, atol=1e-5)
    before, after = nearest_neighbour_accuracy(feats, owners), nearest_neighbour_accuracy(expanded, owners)
    assert before < 0.9 and after > before + 0.05, (before, after)
    # the mean similarity to the person's own centre rises: the noise of single views is averaged out
    centres = np.stack([feats[owners == p].mean(0) for p in range(20)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    assert (expanded * centres[owners]).sum(1).mean() > (feats * centres[owners]).sum(1).mean() + 0.05
    for chunk in (1, 7, 10_000):
        np.testing.assert_allclose(expand(feats, 5, chunk=chunk), expanded, atol=1e-6)
    assert expand(feats, 0) is feats
    np.testing.assert_allclose(expand(feats[:2], 5), expand(feats[:2], 1))  # k is capped at the other images


def test_verify_expands_queries_on_request_and_refuses_a_negative_count(trained_run, tmp_path):
    out = tmp_path / "ver"
    # a number is refused beside the dev photos in the gallery (verify.gallery's default), not ignored
    assert_user_error(facenext("verify", trained_run, "--out", out, "--expand", "3"), "--gallery known")
    known = ["--gallery", "known"]
    assert main(["verify", str(trained_run), "--out", str(out), "--expand", "3", *known]) == 0
    summary = json.loads((out / "verify.json").read_text())
    assert summary["expand"] == 3 and 0 <= summary["dev_accuracy"] <= 1
    curve = pd.read_csv(summary["threshold_curve_csv"])
    assert curve["accuracy"].max() == pytest.approx(summary["dev_accuracy"])
    assert main(["verify", str(trained_run), "--out", str(out), "--expand", "0", "--rerank", "0", *known]) == 0
    plain = json.loads((out / "verify.json").read_text())
    assert plain["expand"] == 0 and plain["embedded_images"] == 0  # the same embeddings, expanded or not
    assert plain["threshold"] != summary["threshold"], "expanded embeddings are compared, not the plain ones"
    result = facenext("verify", trained_run, "--out", out, "--expand", "-1")
    assert_user_error(result, "--expand -1")


def test_verify_reranks_on_request_for_both_families(trained_run, f24_run, tmp_path):
    out = tmp_path / "ver"
    known = ["--gallery", "known"]
    assert main(["verify", str(trained_run), "--out", str(out), "--expand", "0", "--rerank", "0", *known]) == 0
    plain = json.loads((out / "verify.json").read_text())
    assert main(["verify", str(trained_run), "--out", str(out), "--rerank", "6", "--expand", "2", *known]) == 0
    reranked = json.loads((out / "verify.json").read_text())
    assert (reranked["rerank"], reranked["expand"], reranked["embedded_images"]) == (6, 2, 0)
    assert reranked["threshold"] != plain["threshold"] and 0 <= reranked["dev_accuracy"] <= 1
    labels = pd.read_csv(out / "verification_submission.csv")["label"]
    assert labels.str.fullmatch(r"n\d{6}").all()
    pairs = tmp_path / "pairs"
    assert main(["verify", str(f24_run), "--out", str(pairs), "--rerank", "5", "--expand", "0"]) == 0
    summary = json.loads((pairs / "verify.json").read_text())
    assert summary["rerank"] == 5 and 0 <= summary["dev_eer"] <= 1
    assert pd.read_csv(pairs / "verification_submission.csv")["Label"].between(0, 1).all()  # 1 - distance
    assert_user_error(facenext("verify", trained_run, "--out", out, "--rerank", "-1"), "--rerank -1")


def test_the_labelled_dev_photos_join_the_gallery_and_dev_is_scored_leaving_each_out(trained_run, sample, tmp_path):
    out = tmp_path / "ver"
    assert main(["verify", str(trained_run), "--out", str(out)]) == 0  # verify.gallery's default: known+dev
    summary = json.loads((out / "verify.json").read_text())
    layout = find_layout(sample)
    vectors = {}
    for split in ("known", "unknown_dev", "unknown_test"):
        with np.load(out / f"embeddings_{split}.npz") as data:
            vectors[split] = dict(zip(data["paths"].tolist(), data["vectors"], strict=True))
    known = {name.name: [v for p, v in vectors["known"].items() if Path(p).parent.name == name.name]
             for name in layout.known.iterdir()}  # fmt: skip
    dev_files = list_images(layout.unknown_dev)
    dev = [vectors["unknown_dev"][str(layout.unknown_dev / f)] for f in dev_files]
    truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"].tolist()
    assert summary["gallery"] == "known+dev" and summary["gallery_dev_photos"] == len(dev) > 0
    assert summary["no_match_prototypes"] == truth.count("n000000") > 0

    labelled = list(enumerate(zip(dev, truth, strict=True)))

    def best_match(query, left_out=None):
        """By brute force: the best of each person's mean over their known and dev photos, and each no-match dev
        photo, with dev photo ``left_out`` out of the gallery."""
        scored = []
        for name, photos in known.items():
            mean = np.sum(photos + [d for i, (d, t) in labelled if t == name and i != left_out], axis=0)
            scored.append((float(query @ mean / np.linalg.norm(mean)), name))
        scored += [(float(query @ d), t) for i, (d, t) in labelled if t == "n000000" and i != left_out]
        return max(scored)

    dev_best = [best_match(d, left_out=i) for i, d in enumerate(dev)]

    def accuracy(threshold):
        answers = [label if score >= threshold else "n000000" for score, label in dev_best]
        return np.mean(np.array(answers) == np.array(truth))

    best = max(accuracy(t) for t in [-1.0] + [score for score, _ in dev_best])
    assert summary["dev_accuracy"] == pytest.approx(best, abs=1e-6)
    test_files = sorted(list_images(layout.unknown_test))
    answers = [best_match(vectors["unknown_test"][str(layout.unknown_test / f)]) for f in test_files]
    expected = [label if score >= summary["threshold"] - 1e-6 else "n000000" for score, label in answers]
    written = pd.read_csv(out / "verification_submission.csv", dtype=str)
    assert written["label"].tolist() == expected
    assert any(label == "n000000" and score > summary["threshold"] for score, label in answers), (
        "a test photo nearest a no-match dev photo is answered n000000 above the threshold"
    )
