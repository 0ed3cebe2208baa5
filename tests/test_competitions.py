"""Spring 2025 to Fall 2026 from literal files (shared/spec/competitions.md), the combined score, limits and tags.

The fixtures here are written from the spec's own lines (``train_000000.jpg 4521``, ``q6HIqRrx.jpg wxMgJZO4.jpg``)
and the folder names the zips unpack to, with tiny real JPEGs: the readers are tested on what the competitions
ship, not only on what ``sample-data`` writes.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from facenext.cli import main
from facenext.competitions import combined_score, family_of, get_term
from facenext.data.check import check_data
from facenext.data.layout import AmbiguousData, find_layout, list_classes, read_labels
from facenext.data.sample import write_sample_competition
from facenext.ensemble import dev_score, ensemble, fit_to_limit
from facenext.errors import UserError
from facenext.limits import check_limit
from facenext.submission import check_submission, classification_ids, submission_format, write_combined

from .conftest import (
    TEST_PAIRS,
    VAL_PAIRS,
    VER_IMAGES,
    assert_user_error,
    current_layout,
    download,
    fake_outputs,
    fake_run,
    jpeg,
    run,
)

# ---------------------------------------------------------------------------------------------------------------
# Layouts and labels.txt
# ---------------------------------------------------------------------------------------------------------------


def test_real_labels_txt_gives_class_ids_as_indices(tmp_path):
    folder = current_layout(tmp_path / "hw2p2_data")
    train = folder / "cls_data" / "train"
    assert read_labels(train) == [
        ("images/train_000000.jpg", "4521"),
        ("images/train_000001.jpg", "4521"),
        ("images/train_000002.jpg", "17"),
        ("images/train_000003.jpg", "0"),
    ]
    classes = list_classes(train)
    assert len(classes) == 4522 and classes[4521] == "4521" and classes[17] == "17"
    from facenext.data.datasets import image_folder

    paths, labels = image_folder(folder / "cls_data" / "dev", classes)
    assert labels == [17, 4521] and paths[0] == folder / "cls_data" / "dev" / "images" / "dev_000000.jpg"


def test_labels_txt_with_a_name_for_a_class_is_refused_with_its_line(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    (split / "labels.txt").write_text("train_000000.jpg 3\ntrain_000001.jpg n000123\n")
    with pytest.raises(UserError, match="line 2: expected `<image_file> <class_id>`"):
        read_labels(split)


@pytest.mark.parametrize(
    ("slug", "folder", "term"),
    [
        ("hw-2-p-2-fall-2026-student-competition", "hw2p2_data", "f26"),
        ("hw-2-p-2-fall-2026-slack-competition", "hw2p2_data", "f26"),
        ("11785-hw-2-p-2-face-verification-spring-2026", "hw2p2_data", "s26"),
        ("11785-hw-2-p-2-face-verification-fall-2025", "hw2p2_puru_aligned", "f25"),
        ("11785-hw-2-p-2-face-verification-spring-2025", "HW2p2_S25", "s25"),
    ],
)
def test_each_new_term_is_found_in_its_download(tmp_path, slug, folder, term):
    download(tmp_path / "data", slug, folder, test_labels="test_000000.jpg 1\n" if term == "s25" else None)
    layout = find_layout(tmp_path / "data")
    assert layout.term.key == term and layout.root.name == folder
    assert layout.test == layout.root / "cls_data" / "test" / "images"
    assert layout.val_pairs == layout.root / "val_pairs.txt" and layout.ver_images == layout.root / "ver_data"
    assert (layout.test_labels is not None) == (term == "s25")
    assert get_term(term).num_classes == 8631


def test_terms_are_told_apart_by_folder_name_without_a_marker(tmp_path):
    current_layout(tmp_path / "a" / "HW2p2_S25")
    current_layout(tmp_path / "b" / "hw2p2_puru_aligned")
    assert find_layout(tmp_path / "a").term.key == "s25"
    assert find_layout(tmp_path / "b").term.key == "f25"


def test_hw2p2_data_alone_names_no_term_and_is_refused_until_one_is_named(tmp_path):
    import shutil

    # no slug above it, no marker, and no test split (S26 ships test/labels.txt, F26 none): nothing tells them apart
    shutil.rmtree(current_layout(tmp_path / "data" / "hw2p2_data") / "cls_data" / "test")
    with pytest.raises(AmbiguousData, match=r"terms s26, f26 share.*data\.term"):
        find_layout(tmp_path / "data")
    assert find_layout(tmp_path / "data", "f26").term.key == "f26"
    assert main(["check-data", str(tmp_path / "data"), "--term", "s26"]) == 0


def test_pair_files_under_cls_data_are_found_and_checked(tmp_path, capsys):
    folder = current_layout(tmp_path / "hw2p2_data", pairs_under_cls=True)
    layout = find_layout(tmp_path, "f26")
    assert layout.val_pairs == folder / "cls_data" / "val_pairs.txt"
    report = check_data(tmp_path, "f26")
    assert report.problems == []
    assert [s.name for s in report.splits] == ["train", "dev", "test", "ver_images"]
    assert [len(s.images) for s in report.splits] == [4, 2, 3, 4]
    assert report.notes[0].startswith("val_pairs: 3 pairs, 1 genuine, 4 images")
    (folder / "ver_data" / "p9LtY2cE.jpg").unlink()
    report = check_data(tmp_path, "f26")
    assert any("do not exist" in what for what, _ in report.problems)


def test_f24_real_download_folder_is_found(tmp_path):
    folder = tmp_path / "data" / "11785-hw-2-p-2-face-verification-fall-2024" / "11-785-f24-hw2p2-verification"
    for identity in ("n000001", "n000002"):
        for split in ("train", "dev"):
            jpeg(folder / "cls_data" / split / identity / "0001_01.jpg")
    for name in VER_IMAGES:
        jpeg(folder / "ver_data" / name)
    (folder / "val_pairs.txt").write_text(VAL_PAIRS)
    (folder / "test_pairs.txt").write_text(TEST_PAIRS)
    layout = find_layout(tmp_path / "data")
    assert layout.term.key == "f24" and layout.root == folder
    assert check_data(tmp_path / "data").problems == []


def test_the_demo_sample_beside_a_download_is_refused_naming_both(tmp_path, capsys):
    data = tmp_path / "data"
    write_sample_competition(data / "sample", "f23", identities=2, images_per_identity=5, size=16)
    download(data, "hw-2-p-2-fall-2026-student-competition", "hw2p2_data")
    for term in ("auto", "f23"):  # naming the sample's term does not make the real download disappear
        with pytest.raises(AmbiguousData) as error:
            find_layout(data, term)
        assert "sample" in str(error.value) and "hw2p2_data" in str(error.value)
    assert find_layout(data, "f26").term.key == "f26"  # naming the real one is enough
    config = data.parent / "c.yaml"
    config.write_text(f"data: {{root: {data}, term: f23}}\nmodel: {{name: lean_nano}}\n")
    assert main(["info", str(config)]) == 2
    assert "2 competitions under" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The combined score and the F26 submission formats
# ---------------------------------------------------------------------------------------------------------------


def test_combined_score_against_a_hand_computation():
    assert combined_score(0.9, 0.05) == pytest.approx(0.925)  # 0.45 + 0.475
    # genuine scores 0.9, 0.8, 0.3; impostors 0.7, 0.2, 0.1: at any threshold in (0.3, 0.7) one genuine pair is
    # rejected (1/3) and one impostor accepted (1/3): EER = 1/3. Accuracy 3 of 5 = 0.6.
    probs = np.zeros((1, 5, 2))
    probs[0, [0, 1, 2], 0] = probs[0, [3, 4], 1] = 1
    labels = np.array([0, 0, 1, 1, 0])  # predicted 0, 0, 0, 1, 1: right 3 of 5
    pairs = {"val": np.array([[0.9, 0.8, 0.3, 0.7, 0.2, 0.1]]), "val_labels": np.array([1, 1, 1, 0, 0, 0])}
    found = dev_score(family_of(get_term("f26")), np.ones(1), probs, labels, pairs)
    assert found["dev_acc"] == pytest.approx(0.6) and found["dev_eer"] == pytest.approx(1 / 3)
    assert found["dev_score"] == pytest.approx(0.5 * 0.6 + 0.5 * (1 - 1 / 3))
    s26 = dev_score(family_of(get_term("s26")), np.ones(1), None, None, pairs)
    assert s26["dev_score"] == pytest.approx(2 / 3)  # pair terms rank by 1 - EER
    s22 = dev_score(family_of(get_term("s22")), np.ones(1), None, None, pairs)
    assert s22["dev_score"] == pytest.approx(s22["dev_auc"]) and s26["dev_auc"] == s22["dev_auc"] != 2 / 3  # S22: AUC


def test_f26_without_a_sample_submission_needs_a_named_format(tmp_path):
    current_layout(tmp_path / "hw2p2_data")
    layout = find_layout(tmp_path, "f26")
    with pytest.raises(UserError, match="pass --format cls\\+ver-rows"):
        submission_format(layout)
    path = tmp_path / "submission.csv"
    write_combined(path, layout, [4521, 17, 0], [0.75, -0.25], "cls+ver-rows")
    assert path.read_text() == (
        "ID,Label\ntest_000000.jpg,4521\ntest_000001.jpg,17\ntest_000002.jpg,0\n0,0.75\n1,-0.25\n"
    )
    assert check_submission(path, layout, fmt="cls+ver-rows").name == "cls+ver-rows"
    path.write_text(path.read_text().replace("test_000001.jpg,17", "test_000001.jpg,17.5"))
    with pytest.raises(UserError, match=r"'17\.5' of id 'test_000001\.jpg' is not a class index"):
        check_submission(path, layout, fmt="cls+ver-rows")


def test_f26_follows_the_sample_submission_in_the_download(tmp_path):
    folder = current_layout(tmp_path / "hw2p2_data")
    # a sample in a scheme the spec did not record: pairs first (ids 1..N), images by stem, its own header
    (folder / "sample_submission.csv").write_text("row,value\n1,0\n2,0\ntest_000002,0\ntest_000000,0\ntest_000001,0\n")
    layout = find_layout(tmp_path, "f26")
    path = tmp_path / "submission.csv"
    assert write_combined(path, layout, [5, 6, 7], [0.5, 0.25]).name == "sample"
    assert path.read_text() == ("row,value\n1,0.5\n2,0.25\ntest_000002,7\ntest_000000,5\ntest_000001,6\n")
    assert main(["check-submission", str(path), "--data", str(tmp_path), "--term", "f26"]) == 0
    (folder / "sample_submission.csv").write_text("id,label\na,0\nb,0\nc,0\nd,0\ne,0\nf,0\n")
    layout = find_layout(tmp_path, "f26")
    with pytest.raises(UserError, match="not the 3 test images and 2 test pairs"):
        write_combined(path, layout, [5, 6, 7], [0.5, 0.25])


# ---------------------------------------------------------------------------------------------------------------
# Limits, ensembles, the grading tag and S22's submit
# ---------------------------------------------------------------------------------------------------------------


def test_limit_refusal_and_fit_limit_pick_the_best_subset_that_fits(tmp_path, capsys):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=4, images_per_identity=10, size=16)
    runs, predictions = tmp_path / "runs", tmp_path / "predictions"
    made = [
        fake_run(runs, "big_good", 20_000_000, data),
        fake_run(runs, "mid", 12_000_000, data),
        fake_run(runs, "small_poor", 9_000_000, data),
    ]
    for seed, (made_run, quality) in enumerate(zip(made, (1.0, 0.3, 0.0), strict=True)):
        fake_outputs(predictions, made_run, data, quality, seed)
    out = tmp_path / "submission.csv"
    common = ["--out", str(out), "--predictions", str(predictions), "--format", "cls+ver-rows"]
    assert main(["ensemble", *map(str, made), *common]) == 2
    error = capsys.readouterr().err
    assert "41.00 M parameters together" in error and "F26 limit of 30 M" in error and not out.exists()

    assert main(["ensemble", *map(str, made), *common, "--fit-limit"]) == 0
    printed = capsys.readouterr().out
    assert "left out: " in printed
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["parameters"] <= 30_000_000 and summary["format"] == "cls+ver-rows"
    assert "big_good" in " ".join(summary["runs"]) and summary["left_out"]
    assert main(["check-submission", str(out), "--data", str(data), "--term", "f26"]) == 0  # format recorded

    # the pure selection: the two good runs do not fit together, and the poor one only drags the score down
    params = [20, 12, 9]
    dev_probs = np.zeros((3, 4, 2))
    dev_probs[:, :, 0] = [[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]]
    dev_probs[:, :, 1] = 1 - dev_probs[:, :, 0]
    keep, report = fit_to_limit(
        ["a", "b", "c"], params, 30, family_of(get_term("f23")), dev_probs, np.zeros(4, int), None, folds=2
    )
    assert keep == [0] and report["cv_dev_score"] == 1.0


def test_fit_limit_on_a_dev_split_smaller_than_the_folds_scores_every_fold():
    # The demo's sample has 3 dev images: 5 folds left two empty, whose mean was NaN (with a RuntimeWarning)
    dev_probs = np.zeros((2, 3, 2))
    dev_probs[:, :, 0] = [[1, 1, 0], [1, 0, 0]]
    dev_probs[:, :, 1] = 1 - dev_probs[:, :, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep, report = fit_to_limit(
            ["a", "b"], [20, 20], 30, family_of(get_term("f23")), dev_probs, np.zeros(3, int), None, folds=5
        )
    assert keep == [0] and report["cv_dev_score"] == pytest.approx(2 / 3)


def test_submit_refuses_models_over_the_limit_and_sends_the_grading_reference(fake, tmp_path):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=5, size=16)
    layout = find_layout(data, "f26")
    runs = tmp_path / "runs"
    a = fake_run(runs, "a", 18_000_000, data, wandb="me/hw2p2/abc123")
    b = fake_run(runs, "b", 14_000_000, data)
    path = tmp_path / "submission.csv"
    ids, _ = classification_ids(layout)
    pairs = len(layout.test_pairs.read_text().splitlines())
    write_combined(path, layout, [0] * len(ids), [0.5] * pairs, "cls+ver-rows")
    slug = "hw-2-p-2-fall-2026-student-competition"
    (path.with_suffix(".json")).write_text(json.dumps({"runs": [str(a), str(b)], "format": "cls+ver-rows"}))
    args = ["submit", path, "--competition", slug, "--data", data, "--wait", "0", "--runs", runs]
    assert_user_error(run(fake.env(tmp_path), *args), "32.00 M parameters together", "F26 limit of 30 M")
    assert fake.requests == []

    (path.with_suffix(".json")).write_text(json.dumps({"runs": [str(a)], "format": "cls+ver-rows"}))
    result = run(fake.env(tmp_path), *args)
    assert result.returncode == 0, result.stderr
    create = json.loads(fake.calls("CreateSubmission")[0])
    assert create["submissionDescription"] == "|WB=me/hw2p2/abc123"  # W&B run from wandb.json (test_grading.py)


def test_s22_submit_accepts_the_id_match_file_verify_writes(fake, tmp_path):
    data = tmp_path / "s22"
    write_sample_competition(data, "s22", identities=3, images_per_identity=5, size=16)
    layout = find_layout(data)
    pairs = pd.read_csv(layout.test_pairs)
    path = tmp_path / "verification_submission.csv"
    pd.DataFrame({"id": range(len(pairs)), "match": np.linspace(-1, 1, len(pairs))}).to_csv(path, index=False)
    run_dir = tmp_path / "runs" / "r"  # the run behind the file, as `verify` records it: counted against 35 M
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"parameters": 1_000_000}))
    path.with_suffix(".json").write_text(json.dumps({"runs": [str(run_dir)]}))
    slug = "11-785-s22-hw2p2-verification"
    result = run(fake.env(tmp_path), "submit", path, "--competition", slug, "--data", data, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "rows OK; dry run" in result.stdout
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")  # the last pair missing
    result = run(fake.env(tmp_path), "submit", path, "--competition", slug, "--data", data, "--dry-run")
    assert_user_error(result, "missing id")


def test_check_limit_counts_every_model(tmp_path):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=2, images_per_identity=5, size=16)
    runs = [fake_run(tmp_path / "runs", n, p, data) for n, p in (("x", 10_000_000), ("y", 19_000_000))]
    assert check_limit(runs, get_term("f26")) == 29_000_000
    with pytest.raises(UserError, match="over the F23 limit of 21 M"):
        check_limit(runs, get_term("f23"))


def test_ensemble_of_one_f26_run_equals_its_parts(tmp_path):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=6, size=16)
    run_dir = fake_run(tmp_path / "runs", "r", 1_000_000, data)
    fake_outputs(tmp_path / "p", run_dir, data, 1.0, 0)
    out = tmp_path / "sub.csv"
    summary = ensemble([run_dir], out, tmp_path / "p", fmt="cls+ver-rows")
    frame = pd.read_csv(out, dtype=str)
    layout = find_layout(data, "f26")
    ids, _ = classification_ids(layout)
    assert frame["ID"].tolist()[: len(ids)] == ids
    assert summary["dev_score"] == pytest.approx(combined_score(summary["dev_acc"], summary["dev_eer"]))


def test_ensemble_refuses_to_average_cosine_with_reranked_pair_scores(tmp_path):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=6, size=16)
    runs = [fake_run(tmp_path / "runs", name, 1_000_000, data) for name in ("a", "b")]
    fake_outputs(tmp_path / "p", runs[0], data, 1.0, 0)
    fake_outputs(tmp_path / "p", runs[1], data, 1.0, 1, scoring="re-ranking k1=10")
    with pytest.raises(UserError, match="re-ranking k1=10"):
        ensemble(runs, tmp_path / "sub.csv", tmp_path / "p", fmt="cls+ver-rows")
    assert not (tmp_path / "sub.csv").exists()


# ---------------------------------------------------------------------------------------------------------------
# The whole F26 path
# ---------------------------------------------------------------------------------------------------------------


def test_demo_term_f26_runs_the_combined_task_end_to_end(tmp_path, capsys):
    from .conftest import ROOT, TINY_MODEL, TINY_TRAIN

    data, run_dir, subs = tmp_path / "data" / "f26", tmp_path / "runs" / "demo", tmp_path / "submissions"
    write_sample_competition(data, "f26", identities=4, images_per_identity=8, size=32)
    args = ["demo", "--term", "f26", "--config", str(ROOT / "configs" / "demo.yaml"), "--data", str(data)]
    args += ["--run", str(run_dir), "--submissions", str(subs), "train.epochs=2", *TINY_MODEL, *TINY_TRAIN]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "passes check-submission (cls+ver-rows)" in printed

    metrics = pd.read_csv(run_dir / "metrics.csv")  # every epoch in the competition's own metric
    assert len(metrics) == 2 and metrics["dev_eer"].between(0, 1).all()
    expected = 0.5 * metrics["dev_acc"] + 0.5 * (1 - metrics["dev_eer"])
    assert np.allclose(metrics["dev_score"], expected, atol=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["score"] == "dev_combined" and summary["best_dev_score"] == pytest.approx(metrics["dev_score"].max())

    demo = json.loads((subs / "demo_summary_f26.json").read_text())
    assert demo["test_score"] == pytest.approx(combined_score(demo["test_accuracy"], demo["test_eer"]))
    assert demo["format"] == "cls+ver-rows" and "of 30 M" in demo["limit"]
    verified = json.loads((subs / "demo" / "verify.json").read_text())  # each dev EER says where it comes from
    assert demo["verify_dev_eer"] == pytest.approx(verified["dev_eer"]) and demo["verify_scoring"].startswith("flip")
    assert f"verify's dev EER {verified['dev_eer']:.3f} (flip TTA, " in printed
    layout = find_layout(data, "f26")
    frame = pd.read_csv(subs / "submission_f26.csv", dtype=str)
    images, _ = classification_ids(layout)
    assert len(frame) == len(images) + len(layout.test_pairs.read_text().splitlines())
    assert main(["check-submission", str(subs / "submission_f26.csv"), "--data", str(data), "--term", "f26"]) == 0


def test_download_f26_then_check_data(fake, tmp_path):
    import io
    import zipfile

    folder = current_layout(tmp_path / "zip" / "hw2p2_data")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())  # the zip holds hw2p2_data/...
    fake.zip_bytes = buffer.getvalue()
    slug = "hw-2-p-2-fall-2026-student-competition"
    result = run(fake.env(tmp_path), "download", slug, "--out", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    result = run(fake.env(tmp_path), "check-data", tmp_path / "data")  # the marker's slug names the term
    assert result.returncode == 0, result.stderr
    assert "term f26 (Fall 2026)" in result.stdout and "test_pairs: 2 pairs" in result.stdout
