"""Bad input in the current (S25-F26) formats (issue 23, item 5), each on the spec's literal lines: one line, exit 2,
nothing written, or handled correctly. Also the threshold curve of crowded scores (issue 26)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from facenext.checkpoint import save_checkpoint
from facenext.config import config_from_dict
from facenext.data.check import check_data
from facenext.data.layout import find_layout, list_classes, read_labels, read_pairs
from facenext.errors import UserError
from facenext.models import model_from_config
from facenext.run import RunDir
from facenext.verification.identity import evaluate_similarity

from .conftest import (
    CONFIG,
    TEST_PAIRS,
    TINY_MODEL,
    TINY_TRAIN,
    TRAIN_LABELS,
    VAL_PAIRS,
    assert_user_error,
    current_layout,
    download,
    facenext,
    jpeg,
    make_run,
)


@pytest.fixture
def f26(tmp_path):
    """The literal F26 layout under tmp_path/data (hw2p2_data/: --term f26 tells it from S26)."""
    return current_layout(tmp_path / "data" / "hw2p2_data")


def check(data):
    return facenext("check-data", data, "--term", "f26")


# ---------------------------------------------------------------------------------------------------------------
# Pair files
# ---------------------------------------------------------------------------------------------------------------


def test_a_header_line_in_the_pair_files_is_skipped(f26, tmp_path):
    (f26 / "val_pairs.txt").write_text("img1 img2 label\n" + VAL_PAIRS)
    (f26 / "test_pairs.txt").write_text("img1 img2\n" + TEST_PAIRS)
    val = read_pairs(f26 / "val_pairs.txt", labelled=True)
    assert val.values.tolist() == [line.split() for line in VAL_PAIRS.splitlines()]
    assert len(read_pairs(f26 / "test_pairs.txt", labelled=False)) == 2
    result = check(tmp_path / "data")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "val_pairs: 3 pairs, 1 genuine" in result.stdout and "test_pairs: 2 pairs" in result.stdout


LABEL_2 = VAL_PAIRS.replace("p9LtY2cE.jpg 0\n", "p9LtY2cE.jpg 2\n", 1)
THREE_COLUMNS = "q6HIqRrx.jpg wxMgJZO4.jpg 1\nZk3mQ0aB.jpg q6HIqRrx.jpg 0\n"
ONE_CLASS = "q6HIqRrx.jpg wxMgJZO4.jpg 1\nZk3mQ0aB.jpg p9LtY2cE.jpg 1\n"


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("val_pairs.txt", LABEL_2, ["line 2", "'2'", "0 (impostor)"]),
        ("val_pairs.txt", VAL_PAIRS.replace(" 1\n", " yes\n"), ["line 1", "'yes'", "1 (genuine)"]),
        ("test_pairs.txt", TEST_PAIRS + "Zk3mQ0aB.jpg wxMgJZO4.jpg 1\n", ["line 3", "expected `<imgA> <imgB>`"]),
        ("val_pairs.txt", VAL_PAIRS + "Zk3mQ0aB.jpg wxMgJZO4.jpg\n", ["line 4", "<imgA> <imgB> <0|1>", "2 fields"]),
        ("test_pairs.txt", THREE_COLUMNS, ["line 1", "labelled pair file"]),
        ("val_pairs.txt", ONE_CLASS, ["all 2 pairs", "EER is undefined"]),
    ],
    ids=["label-2", "label-yes", "mixed-test", "mixed-val", "three-column-test", "one-class-val"],
)
def test_bad_pair_files_are_reported_in_one_line(f26, tmp_path, name, text, words):
    (f26 / name).write_text(text)
    with pytest.raises(UserError) as refused:
        read_pairs(f26 / name, labelled=name == "val_pairs.txt")
    assert all(word in str(refused.value) for word in words), refused.value
    assert_user_error(check(tmp_path / "data"), name, *words)


def test_a_pair_image_missing_is_refused_before_training(f26, tmp_path):
    (f26 / "ver_data" / "p9LtY2cE.jpg").unlink()
    run = tmp_path / "run"
    args = ["train", CONFIG, "--out", run, f"data.root={f26}", "data.term=f26", "train.epochs=1"]
    assert_user_error(facenext(*args, *TINY_MODEL, *TINY_TRAIN), "val_pairs.txt names 1 images", "p9LtY2cE.jpg")
    assert not run.exists() or not any(run.iterdir())  # nothing written


# ---------------------------------------------------------------------------------------------------------------
# labels.txt
# ---------------------------------------------------------------------------------------------------------------


def test_labels_txt_problems_are_each_reported_and_a_bom_is_read(f26, tmp_path):
    train = f26 / "cls_data" / "train"
    jpeg(train / "images" / "train_000004.jpg", 90)
    (train / "labels.txt").write_text(
        "\ufeff"  # a byte order mark, as some editors save: stripped
        + TRAIN_LABELS
        + "train_000001.jpg 4521\n"  # line 5 repeats line 2
        + "train_000002.jpg 18\n"  # line 6: listed under 17 too
        + "train_000004.jpg 8631\n"  # line 7: F26's ids are 0..8630
    )
    assert read_labels(train)[0] == ("images/train_000000.jpg", "4521")
    report = check_data(tmp_path / "data", "f26")
    problems = {what: names for what, names in report.problems}
    assert problems == {
        "train: labels.txt: 1 repeated lines": ["line 5 repeats line 2 (images/train_000001.jpg 4521)"],
        "train: labels.txt: 1 images listed under two classes": ["images/train_000002.jpg (17, 18)"],
        "train: labels.txt: 1 class ids outside 0..8630": ["line 7 (images/train_000004.jpg 8631)"],
    }
    assert_user_error(check(tmp_path / "data"), "3 problems", "repeated", "two classes", "outside 0..8630")

    run = tmp_path / "run"
    args = ["train", CONFIG, "--out", run, f"data.root={f26}", "data.term=f26", *TINY_MODEL, *TINY_TRAIN]
    assert_user_error(facenext(*args), "listed under two classes", "train_000002.jpg (17, 18)", "check-data")
    assert not run.exists() or not any(run.iterdir())


def test_a_bom_alone_is_handled(f26, tmp_path):
    labels = f26 / "cls_data" / "train" / "labels.txt"
    labels.write_text("\ufeff" + TRAIN_LABELS)
    (f26 / "val_pairs.txt").write_text("\ufeff" + VAL_PAIRS)
    result = check(tmp_path / "data")
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Options: --fit-limit without a limit; advice that names options that exist
# ---------------------------------------------------------------------------------------------------------------


def test_fit_limit_for_a_term_without_a_limit_says_so(tmp_path):
    data = tmp_path / "data"
    download(data, "11785-hw-2-p-2-face-verification-spring-2025", "HW2p2_S25")
    made = make_run(tmp_path / "runs", "a", data, "s25", 1_000_000)
    result = facenext("ensemble", made, "--fit-limit", "--out", tmp_path / "s.csv", "--predictions", tmp_path / "p")
    assert_user_error(result, "no parameter limit is known for S25", "drop --fit-limit")
    assert not (tmp_path / "s.csv").exists()


def test_verify_names_no_option_it_does_not_have(sample, tmp_path):
    data = tmp_path / "sample"
    shutil.copytree(sample, data)
    known = find_layout(data).known
    broken = sorted(known.rglob("*.jpg"))[0]
    broken.write_bytes(b"not an image")
    run = RunDir(tmp_path / "run")  # an untrained tiny model: enough to reach the unreadable image
    model = {"name": "lean_nano", "dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}
    config = config_from_dict({"data": {"root": str(data), "image_size": 48, "num_workers": 0}, "model": model})
    classes = list_classes(find_layout(data).train)
    run.write_config(config)
    run.write_classes(classes)
    save_checkpoint(
        run.weights_file(), {"model": model_from_config(config, len(classes)).state_dict(), "classes": classes}
    )
    result = facenext("verify", run.path, "--out", tmp_path / "out")
    assert_user_error(result, str(broken), "check-data")
    assert "--fill" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Issue 26: the threshold curve of crowded scores
# ---------------------------------------------------------------------------------------------------------------


def test_the_threshold_curve_of_crowded_float32_scores_is_written(sample, tmp_path):
    # After query expansion many best-match similarities lie one float32 step apart: their float32 midpoints
    # repeated, and the curve, written through the submission writer, was refused for "duplicate ids".
    n = 300
    similarity = np.zeros((n, 2), np.float32)
    similarity[:, 0] = np.float32(1) - np.arange(n, dtype=np.float32) * np.float32(6e-8)
    truth = np.where(np.arange(n) % 3 == 0, "n000000", "a")
    summary, threshold = evaluate_similarity(similarity, truth, ["a", "b"], find_layout(sample), tmp_path)
    curve = pd.read_csv(summary["threshold_curve_csv"])
    assert len(curve) == len(np.unique(similarity[:, 0])) + 1 and curve["threshold"].is_monotonic_increasing
    assert curve["threshold"].is_unique
    accepted = similarity[:, 0] >= threshold  # the tuned threshold gives the accuracy reported for it
    assert (np.where(accepted, "a", "n000000") == truth).mean() == pytest.approx(summary["dev_accuracy"])
