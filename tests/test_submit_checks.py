"""What `submit` uploads (issue 23, item 4): only a file checked against a local copy of the competition (or one the
user explicitly sends unchecked), only a kind of file the term's competition scores, and only models whose
parameters are counted, from any folder, against the term's limit.

Layouts and files are the spec's literal lines (``tests/conftest.py``); uploads go through the real kaggle
client to the fake server, which shows what reached it.
"""

from __future__ import annotations

import json

import pytest

from facenext.cli import main
from facenext.competitions import get_term
from facenext.data.layout import find_layout
from facenext.data.sample import write_sample_competition
from facenext.errors import UserError
from facenext.kaggle import submit
from facenext.limits import check_limit
from facenext.submission import check_submission, write_combined

from .conftest import assert_user_error, current_layout, download, facenext, fake_outputs, make_run, run

S26 = "11785-hw-2-p-2-face-verification-spring-2026"
F26 = "hw-2-p-2-fall-2026-student-competition"
# a classification file for the literal layout's three test images, class ids as labels.txt gives them
CLASSIFICATION = "id,label\ntest_000000.jpg,4521\ntest_000001.jpg,17\ntest_000002.jpg,0\n"
PAIRS = "ID,Label\n0,0.75\n1,-0.25\n"  # S26's file for the literal two test pairs


# ---------------------------------------------------------------------------------------------------------------
# No local copy of the competition: refused, unless --no-check
# ---------------------------------------------------------------------------------------------------------------


def test_submit_without_the_competition_data_uploads_nothing_unless_no_check(fake, tmp_path):
    csv = tmp_path / "submission.csv"
    csv.write_text(PAIRS)
    args = ["submit", csv, "--competition", S26, "--wait", "0", "--message", "m"]
    result = run(fake.env(tmp_path), *args, cwd=tmp_path)  # the default --data, `data`, is absent
    assert_user_error(result, "cannot check", "--data DIR", "--no-check")
    assert fake.requests == [] and "rows OK" not in result.stdout  # nothing reached Kaggle
    with pytest.raises(UserError, match=r"cannot check .* no copy of .* under .*nowhere"):  # a wrong path
        submit(csv, S26, data_root=tmp_path / "nowhere", dry_run=True)
    result = run(fake.env(tmp_path), *args, "--no-check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "submitted unchecked (--no-check)" in result.stdout and "rows OK" not in result.stdout
    assert [body for method, _, body in fake.requests if method == "PUT"] == [csv.read_bytes()]


# ---------------------------------------------------------------------------------------------------------------
# Each term accepts only what its competition scores
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "folder", "term"),
    [
        ("11785-hw-2-p-2-face-verification-spring-2025", "HW2p2_S25", "s25"),
        ("11785-hw-2-p-2-face-verification-fall-2025", "hw2p2_puru_aligned", "f25"),
        (S26, "hw2p2_data", "s26"),
    ],
)
def test_pair_only_terms_refuse_a_classification_file(tmp_path, slug, folder, term):
    root = download(tmp_path / "data", slug, folder, test_labels="test_000000.jpg 4521\n")
    layout = find_layout(tmp_path / "data")
    assert layout.term.key == term and layout.root == root
    classification, pairs = tmp_path / "classification.csv", tmp_path / "pairs.csv"
    classification.write_text(CLASSIFICATION)
    pairs.write_text(PAIRS)
    result = facenext("check-submission", classification, "--data", tmp_path / "data")
    assert_user_error(result, "classification file", f"{term.upper()} competition scores only the test pairs")
    result = facenext("check-submission", classification, "--data", tmp_path / "data", "--kind", "classification")
    assert_user_error(result, "--kind", f"{term.upper()} competition scores only the test pairs")
    assert facenext("check-submission", pairs, "--data", tmp_path / "data").returncode == 0


def test_f24_and_f26_refuse_a_classification_file_f23_takes_it(tmp_path, sample, sample_f24):
    f24 = tmp_path / "f24.csv"
    f24.write_text("id,label\n0,3\n1,5\n")
    result = facenext("check-submission", f24, "--data", sample_f24, "--kind", "classification")
    assert_user_error(result, "F24 competition scores only the test pairs")

    current_layout(tmp_path / "f26" / "hw2p2_data")
    f26 = tmp_path / "f26.csv"
    f26.write_text(CLASSIFICATION)
    with pytest.raises(UserError, match="F26 competition scores one file with both tasks"):
        check_submission(f26, find_layout(tmp_path / "f26", "f26"), "classification")

    from facenext.submission import classification_ids

    ids, _ = classification_ids(find_layout(sample))
    f23 = tmp_path / "f23.csv"
    f23.write_text("id,label\n" + "".join(f"{i},0\n" for i in ids))
    assert check_submission(f23, find_layout(sample)).name == "classification"


@pytest.mark.parametrize("fmt", ["classification", "pairs", "identity"])
def test_f26_refuses_a_format_of_one_part_only(tmp_path, fmt):
    # `--format classification` (or a record naming it) passed F26's class rows alone as the combined file, and
    # `--format identity` wrote nothing but a traceback: F26's file carries both tasks, whatever format is named
    current_layout(tmp_path / "f26" / "hw2p2_data")
    layout = find_layout(tmp_path / "f26", "f26")
    f26 = tmp_path / "f26.csv"
    f26.write_text(CLASSIFICATION)
    with pytest.raises(UserError, match=f"{fmt}.*F26.*both tasks.*: cls\\+ver-rows, sample"):
        check_submission(f26, layout, fmt=fmt)
    with pytest.raises(UserError, match=f"{fmt}.*F26.*both tasks"):
        write_combined(tmp_path / "out.csv", layout, [0, 0, 0], [0.5, 0.5], fmt)
    assert not (tmp_path / "out.csv").exists()


def test_submit_refuses_a_classification_file_for_s26(tmp_path):
    download(tmp_path / "data", S26, "hw2p2_data")
    csv = tmp_path / "submission.csv"
    csv.write_text(CLASSIFICATION)
    with pytest.raises(UserError, match="classification file, but the S26 competition scores only the test pairs"):
        submit(csv, S26, data_root=tmp_path / "data", dry_run=True)


# ---------------------------------------------------------------------------------------------------------------
# The parameter limit
# ---------------------------------------------------------------------------------------------------------------


def test_an_ensemble_is_counted_from_another_folder(fake, tmp_path, monkeypatch):
    data = tmp_path / "project" / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=6, size=16)
    project = tmp_path / "project"
    for name, parameters in (("a", 12_000_000), ("b", 6_000_000)):
        made = make_run(project / "runs", name, data, "f26", parameters)
        fake_outputs(project / "submissions", made, data, 1.0, len(name))
    monkeypatch.chdir(project)  # the ensemble names its runs relative to where it runs
    out = project / "submissions" / "f26.csv"
    assert main(["ensemble", "runs/a", "runs/b", "--out", str(out), "--format", "cls+ver-rows"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["runs"] == [str(project / "runs" / "a"), str(project / "runs" / "b")]
    assert all(len(f) == 16 for f in record["run_fingerprints"]) and record["run_parameters"] == [12e6, 6e6]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["submit", out, "--competition", F26, "--data", data, "--dry-run"]
    result = run(fake.env(tmp_path), *args, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "18.00 M parameters together, within the F26 limit of 30 M" in result.stdout
    assert "rows OK; dry run" in result.stdout and "not counted" not in result.stdout


def test_a_run_without_summary_is_counted_from_its_config(tmp_path, capsys):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=6, size=16)
    runs, predictions = tmp_path / "runs", tmp_path / "predictions"
    full = make_run(runs, "full", data, "f26", 30_000_000 - 1000)  # 1000 parameters below the limit
    stopped = make_run(runs, "stopped", data, "f26", None)  # no summary.json: it stopped before the end
    for seed, made in enumerate((full, stopped)):
        fake_outputs(predictions, made, data, 1.0, seed)
    out = tmp_path / "f26.csv"
    args = ["ensemble", full, stopped, "--out", out, "--predictions", predictions, "--format", "cls+ver-rows"]
    assert_user_error(facenext(*args), "stopped", "over the F26 limit of 30 M")
    assert not out.exists()


def test_runs_with_the_same_folder_name_are_each_counted(tmp_path):
    data = tmp_path / "data"
    write_sample_competition(data, "f26", identities=2, images_per_identity=5, size=16)
    first = make_run(tmp_path / "x", "lean", data, "f26", 16_000_000)
    second = make_run(tmp_path / "y", "lean", data, "f26", 16_000_000)
    with pytest.raises(UserError, match=r"32\.00 M parameters together .*x/lean 16\.00 M, .*y/lean 16\.00 M"):
        check_limit([first, second], get_term("f26"))
    # the ensemble refuses them: their saved predictions would share one folder
    result = facenext("ensemble", first, second, "--predictions", tmp_path / "p", "--out", tmp_path / "s.csv")
    assert_user_error(result, "share the folder name lean", "rename one")


def test_submit_refuses_models_it_cannot_count_under_a_limit(tmp_path):
    download(tmp_path / "data", S26, "hw2p2_data")
    csv = tmp_path / "submission.csv"
    csv.write_text(PAIRS)
    args = dict(competition=S26, data_root=tmp_path / "data", dry_run=True, runs_root=tmp_path / "runs")
    with pytest.raises(UserError, match=r"nothing records the models behind .* --no-check"):
        submit(csv, **args)
    gone = tmp_path / "moved-away" / "r"  # a run the record names, found nowhere from here, its count unrecorded
    csv.with_suffix(".json").write_text(json.dumps({"runs": [str(gone)]}))
    with pytest.raises(UserError, match=r"parameters of r are unknown .* S26 limit of 30 M .* --runs DIR"):
        submit(csv, **args)
    assert submit(csv, **args, no_check=True)["uploaded"] is False  # a dry run: checked nothing, says so
