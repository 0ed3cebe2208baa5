"""Inference for real on the tiny trained run: TTA, merges, determinism, errors, ensembles and submission checks."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.special import softmax

from facenext.cli import main
from facenext.data.layout import find_layout, list_classes, list_images
from facenext.errors import UserError
from facenext.inference import load_run, merge_outputs, parse_tta, run_model
from facenext.submission import check_submission, classification_ids, verification_ids, write_submission

from .conftest import data_root

SPECS = {"none": 1, "flip": 2, "five@0.9": 5, "ten@0.9": 10, "scales@0.9,1.0,1.1": 3, "flip+five@0.9": 10}


def test_tta_specs_give_the_expected_views():
    for spec, count in SPECS.items():
        assert len(parse_tta(spec)) == count, spec
    assert len(parse_tta("flip+scales@0.9,1.1")) == 4
    geometry = {spec: {(v.box, v.scale, v.flip) for v in parse_tta(spec)} for spec in ("flip+five@0.9", "ten@0.9")}
    assert geometry["flip+five@0.9"] == geometry["ten@0.9"]
    for bad in ("mirror", "five", "five@x", "five@1.5", "five@0.9+ten@0.8", "flip+flip"):
        with pytest.raises(UserError):
            parse_tta(bad)


@pytest.mark.parametrize("spec", list(SPECS))
def test_predict_dev_with_each_tta(trained_run, tmp_path, spec):
    assert main(["predict", str(trained_run), "--split", "dev", "--tta", spec, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "predict_dev.json").read_text())
    assert len(summary["view_acc"]) == SPECS[spec] and summary["dev_acc"] >= 0.5, summary
    with np.load(tmp_path / "dev_logits.npz") as data:
        assert data["logits"].dtype == np.float16 and data["logits"].shape == (summary["images"], 8)
        assert np.isfinite(data["logits"]).all() and len(data["labels"]) == summary["images"]


def test_flip_on_a_symmetric_input_equals_no_tta(trained_run, sample, tmp_path):
    paths = []
    for i, path in enumerate(sorted((find_layout(sample).test).iterdir())[:6]):
        image = np.asarray(Image.open(path).convert("RGB"))
        half = image[:, : image.shape[1] // 2]
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(paths[-1])
    run = load_run(trained_run)
    plain = run_model(run, paths, "none", 4, return_feats=False)
    flipped = run_model(run, paths, "flip", 4, return_feats=False)
    assert np.allclose(plain, flipped, atol=1e-4)


def test_merge_modes():
    outputs = torch.randn(3, 5, 7)
    probs = torch.softmax(outputs, -1)
    assert torch.allclose(merge_outputs(outputs, "logit"), outputs.mean(0))
    assert torch.allclose(torch.softmax(merge_outputs(outputs, "prob"), -1), probs.mean(0), atol=1e-6)
    geo = probs.prod(0) ** (1 / 3)
    assert torch.allclose(torch.softmax(merge_outputs(outputs, "geo"), -1), geo / geo.sum(-1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("merge", ["prob", "logit", "geo"])
def test_predict_merges_views(trained_run, tmp_path, merge):
    args = ["predict", str(trained_run), "--split", "dev", "--tta", "flip+five@0.9", "--merge", merge]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "predict_dev.json").read_text())["dev_acc"] >= 0.5


def test_predicting_twice_gives_identical_files(trained_run, tmp_path):
    for name in ("a", "b"):
        assert main(["predict", str(trained_run), "--tta", "flip", "--out", str(tmp_path / name)]) == 0
    for file in ("test_logits.npz", "submission.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    with np.load(tmp_path / "a" / "test_logits.npz") as data:  # still a plain npz
        assert set(data.files) == {"logits", "ids", "classes", "weights"}


def test_other_class_list_is_a_one_line_error(trained_run, sample, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    train = find_layout(data).train
    shutil.copytree(train / list_classes(train)[0], train / "zz_stranger")
    assert main(["predict", str(trained_run), "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "zz_stranger" in err and "classes.json" in err and "\n" not in err and "Traceback" not in err


def test_corrupt_test_image_fails_or_is_filled(trained_run, sample, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    layout = find_layout(data)
    broken = list_images(layout.test)[3]
    (layout.test / broken).write_bytes(b"not an image")
    args = ["predict", str(trained_run), "--data", str(data), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert broken in capsys.readouterr().err
    assert not (tmp_path / "out" / "submission.csv").exists()
    with pytest.warns(UserWarning, match=broken):
        assert main([*args, "--fill"]) == 0
    assert "most common prediction" in capsys.readouterr().err  # a warning: on stderr, as the others
    submission = pd.read_csv(tmp_path / "out" / "submission.csv", dtype={"id": str})
    assert submission["id"].tolist() == list_images(layout.test)
    assert submission["label"].iloc[3] == submission["label"].drop(index=3).mode().iloc[0]
    assert json.loads((tmp_path / "out" / "predict_test.json").read_text())["filled"] == [broken]


def test_ensemble_fits_non_negative_weights_with_a_cross_validated_report(trained_run, tmp_path):
    preds, runs = tmp_path / "subs", []
    for name, tta in (("r_none", "none"), ("r_flip", "flip"), ("r_crop", "five@0.8")):
        run = tmp_path / name
        shutil.copytree(trained_run, run)
        runs.append(str(run))
        for split in ("dev", "test"):
            args = ["predict", str(run), "--split", split, "--tta", tta, "--out", str(preds / name)]
            assert main(args) == 0
    out = tmp_path / "ens" / "submission.csv"
    assert main(["ensemble", *runs, "--weights", "fit", "--out", str(out), "--predictions", str(preds)]) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    weights = np.array(list(summary["weights"].values()))
    assert (weights >= 0).all() and abs(weights.sum() - 1) < 1e-6
    assert {"fit_acc", "equal_acc", "acc_gain", "fit_loss", "equal_loss", "folds"} <= set(summary["cv"])
    assert summary["dev_acc_fit"] >= 0.5 and len(pd.read_csv(out)) == summary["rows"]
    check_submission(out, find_layout(data_root(trained_run)), "classification")

    # A run predicted on another class list is refused, naming what differs.
    with np.load(preds / "r_crop" / "test_logits.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["classes"] = np.array([*arrays["classes"][:-1], "someone_else"])
    np.savez(preds / "r_crop" / "test_logits.npz", **arrays)
    with pytest.raises(UserError, match=r"other test classes.*someone_else"):
        from facenext.ensemble import ensemble

        ensemble(runs, out, preds)


def _rewrite(path, frame):
    frame.to_csv(path, index=False)
    return path


def _expect_error(path, layout, kind, match):
    with pytest.raises(UserError, match=match):
        check_submission(path, layout, kind)


def test_check_submission_catches_bad_classification_files(sample, tmp_path, capsys):
    layout = find_layout(sample)
    ids, _ = classification_ids(layout)
    good = pd.DataFrame({"id": ids, "label": np.arange(len(ids)) % 8})
    path = _rewrite(tmp_path / "c.csv", good)
    assert main(["check-submission", str(path), "--data", str(sample)]) == 0
    assert main(["check-submission", str(path), "--data", str(sample), "--kind", "classification"]) == 0
    _expect_error(_rewrite(path, good.iloc[1:]), layout, "classification", "missing")
    extra = pd.concat([good, pd.DataFrame({"id": ["999999.jpg"], "label": [0]})])
    _expect_error(_rewrite(path, extra), layout, "classification", "unexpected")
    _expect_error(_rewrite(path, pd.concat([good, good.iloc[:1]])), layout, "classification", "duplicated")
    _expect_error(_rewrite(path, good.assign(label=good["label"].replace(7, 8))), layout, "classification", "index")
    _expect_error(_rewrite(path, good.assign(label=-1)), layout, "classification", "index")
    _expect_error(_rewrite(path, good.rename(columns={"label": "class"})), layout, "classification", "header")
    assert main(["check-submission", str(path), "--data", str(sample)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_check_submission_catches_bad_verification_files(sample, sample_f24, tmp_path):
    layout = find_layout(sample)
    ids, _ = verification_ids(layout)
    known = list_classes(layout.known)
    good = pd.DataFrame({"id": ids, "label": [known[i % len(known)] if i % 3 else "n000000" for i in range(len(ids))]})
    path = _rewrite(tmp_path / "v.csv", good)
    check_submission(path, layout, "verification")
    check_submission(path, layout)  # identity labels: recognised as verification
    _expect_error(_rewrite(path, good.iloc[:-1]), layout, "verification", "missing")
    _expect_error(_rewrite(path, pd.concat([good, good.iloc[:1]])), layout, "verification", "duplicated")
    _expect_error(_rewrite(path, good.assign(label="n999999")), layout, "verification", "neither a known identity")

    pairs = find_layout(sample_f24)
    count = len(pairs.test_pairs.read_text().splitlines())
    good = pd.DataFrame({"ID": range(count), "Label": np.linspace(-1, 1, count)})
    path = _rewrite(tmp_path / "p.csv", good)
    check_submission(path, pairs)
    _expect_error(_rewrite(path, good.iloc[:-1]), pairs, None, "missing")
    _expect_error(
        _rewrite(path, pd.concat([good, pd.DataFrame({"ID": [count], "Label": [0.0]})])), pairs, None, "unexpected"
    )
    _expect_error(_rewrite(path, pd.concat([good, good.iloc[:1]])), pairs, None, "duplicated")
    _expect_error(_rewrite(path, good.assign(Label=good["Label"].replace(1.0, np.inf))), pairs, None, "finite")
    _expect_error(_rewrite(path, good.rename(columns={"Label": "score"})), pairs, None, "header")


def test_a_failed_check_leaves_the_previous_good_file_intact(sample, tmp_path):
    layout = find_layout(sample)
    ids, _ = classification_ids(layout)
    path = tmp_path / "submission.csv"
    write_submission(path, {"id": ids, "label": [0] * len(ids)}, layout=layout, kind="classification")
    before = path.read_bytes()
    with pytest.raises(UserError, match="class index"):
        write_submission(path, {"id": ids, "label": [99] * len(ids)}, layout=layout, kind="classification")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_fitted_weights_favour_the_informative_model():
    from facenext.ensemble import fit_weights

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    good = softmax(np.eye(4)[labels] * 3 + rng.normal(size=(200, 4)), axis=1)
    noise = softmax(rng.normal(size=(200, 4)), axis=1)
    weights = fit_weights(np.stack([good, noise]), labels)
    assert (weights >= 0).all() and abs(weights.sum() - 1) < 1e-9 and weights[0] > 0.9
