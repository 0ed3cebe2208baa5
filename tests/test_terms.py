"""Terms as data: the shipped terms.yaml loads into the same Term values as before, and a user's own term (the next
one) comes from a YAML file and runs every stage through the CLI, without a new release."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from facenext.competitions import TERMS, Term, get_term
from facenext.competitions.terms import TERMS_ENV, restored_terms
from facenext.config import load_config
from facenext.kernel import _competitions, notebook_script

from .conftest import CONFIG, assert_user_error, facenext, train_args

S27_SLUG = "11785-hw-2-p-2-face-verification-spring-2027"
# The next term of a known family, as a student would write it: like S26, with its own slug, folder and limit.
S27 = f"""
s27:
  like: s26
  title: Spring 2027
  slugs: [{S27_SLUG}]
  folders: [hw2p2_s27, {S27_SLUG}]
  param_limit: 25000000
  eer_in_percent: false
"""

# The values terms.py held as Python before they moved to terms.yaml (written out from competitions.md).
SHIPPED = {
    "f23": Term(
        key="f23",
        title="Fall 2023",
        slugs=("11-785-f23-hw2p2-classification", "11-785-f23-hw2p2-verification"),
        num_classes=7001,
        param_limit=21_000_000,
        family="identity",
        ver_metric="accuracy",
        cls_dir="11-785-f23-hw2p2-classification",
        ver_dir="11-785-f23-hw2p2-verification",
        folders=("11-785-f23-hw2p2-classification", "11-785-f23-hw2p2-verification") * 2,
    ),
    "s26": Term(
        key="s26",
        title="Spring 2026",
        slugs=("11785-hw-2-p-2-face-verification-spring-2026",),
        folders=("hw2p2_data", "11785-hw-2-p-2-face-verification-spring-2026"),
        num_classes=8631,
        param_limit=30_000_000,
        family="pairs",
        ver_metric="eer",
        submission_format="pairs",
        train="cls_data/train",
        dev="cls_data/dev",
        test="cls_data/test",
        labels_file="labels.txt",
        test_labels=True,
        cls_sample=None,
        ver_sample=None,
        no_match=None,
        eer_in_percent=True,
    ),
    "f26": Term(
        key="f26",
        title="Fall 2026",
        slugs=("hw-2-p-2-fall-2026-student-competition", "hw-2-p-2-fall-2026-slack-competition"),
        folders=("hw2p2_data", "hw-2-p-2-fall-2026-student-competition", "hw-2-p-2-fall-2026-slack-competition"),
        num_classes=8631,
        param_limit=30_000_000,
        family="combined",
        ver_metric="eer",
        submission_format=None,
        train="cls_data/train",
        dev="cls_data/dev",
        test="cls_data/test",
        labels_file="labels.txt",
        test_labels=False,
        cls_sample=None,
        ver_sample=None,
        no_match=None,
        grading_tag="",
    ),
}


def test_the_shipped_terms_load_as_they_were():
    assert list(TERMS) == ["f23", "s24", "s23", "f24", "s22", "f22", "s25", "f25", "s26", "f26"]
    for key, expected in SHIPPED.items():
        assert get_term(key) == expected, key
    assert (get_term("s23").id_digits, get_term("s22").pair_header, get_term("s22").pair_dirs) == (
        5,
        ("id", "match"),
        ("dev", "test"),
    )


def write_terms(tmp_path: Path, text: str = S27, name: str = "terms.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_term_from_a_file_runs_every_stage(tmp_path):
    terms = write_terms(tmp_path)
    listed = facenext("terms", "--terms", terms)
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith("s27 "))
    assert "Spring 2027" in row and "25M" in row and "eer (lower is better)" in row and S27_SLUG in row
    assert row.endswith(str(terms.resolve())) and listed.stdout.splitlines()[1].endswith("facenext")

    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "out"
    made = facenext("sample-data", data, "--term", "s27", "--terms", terms, "--identities", "6",
                    "--images-per-identity", "8", "--size", "48")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (data / "hw2p2_s27" / "cls_data" / "train" / "labels.txt").is_file()  # the term's own root folder
    checked = facenext("check-data", data, "--terms", terms)  # found among every known term, the file's included
    assert checked.returncode == 0 and "term s27 (Spring 2027)" in checked.stdout, checked.stdout + checked.stderr
    # The run records data.terms_file: predict and verify read the term from the run's config, no flag needed.
    trained = facenext(*train_args(data, run, "train.epochs=1", "data.term=s27", f"data.terms_file={terms}"))
    assert trained.returncode == 0, trained.stderr
    assert facenext("predict", run, "--out", out).returncode == 0
    assert facenext("verify", run, "--out", out).returncode == 0
    summary = json.loads((out / "verify.json").read_text())
    assert 0 <= summary["dev_eer"] <= 1
    submission = out / "verification_submission.csv"
    assert submission.is_file()
    result = facenext("check-submission", submission, "--data", data, "--term", "s27", "--terms", terms)
    assert result.returncode == 0, result.stderr
    assert "s27" not in TERMS  # a command's terms do not outlive it


def test_the_environment_names_terms_files(tmp_path, monkeypatch):
    monkeypatch.setenv(TERMS_ENV, str(write_terms(tmp_path)))
    assert any(line.startswith("s27 ") for line in facenext("terms").stdout.splitlines())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (S27 + "  epochs: 3\n", ["unknown key s27.epochs"]),
        (S27.replace("25000000", "lots"), ["s27.param_limit", "int"]),
        (S27 + "  family: faces\n", ["s27.family", "identity, pairs, combined"]),
        (S27 + "  ver_metric: f1\n", ["s27.ver_metric"]),
        (S27 + "  num_classes: 0\n", ["s27.num_classes must be positive"]),
        (S27.replace("like: s26", "like: s99"), ["s27.like", "s99"]),
        (S27.replace("s27:", "s26:"), ["term s26 is already shipped with facenext", "another key"]),
        (S27.replace(S27_SLUG, "hw-2-p-2-fall-2026-student-competition"), ["s27.slugs", "term f26's slug"]),
        ("s27:\n  title: Spring 2027\n  slugs: [x]\n", ["s27 lacks num_classes", "like"]),
        ("s27: [1, 2]\n", ["term s27 must be a mapping"]),
        ("S 27: {like: s26}\n", ["term key 'S 27'"]),
        ("s27: {like: s26\n", ["not valid YAML"]),
    ],
    ids=["key", "value", "family", "metric", "classes", "like", "shipped", "slug", "fields", "entry", "name", "yaml"],
)
def test_a_bad_terms_file_is_refused_in_one_line(tmp_path, text, words):
    terms = write_terms(tmp_path, text)
    assert_user_error(facenext("terms", "--terms", terms), str(terms), *words)


def test_a_missing_terms_file_is_named(tmp_path):
    assert_user_error(facenext("check-data", tmp_path, "--terms", tmp_path / "none.yaml"), "none.yaml", "--terms")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{terms_file: {tmp_path / 'none.yaml'}}}\n")
    assert_user_error(facenext("info", config), "none.yaml", "data.terms_file")


def test_a_kaggle_notebook_carries_the_terms_file(tmp_path):
    terms = write_terms(tmp_path)
    with restored_terms():  # load_config adds the file's terms to this process: not beyond this test
        config = load_config(CONFIG, ["data.term=s27", f"data.terms_file={terms}"])
        assert _competitions(config, None) == [S27_SLUG]  # the notebook attaches the new term's competition
    code = notebook_script(CONFIG, [], [S27_SLUG], "run", terms_text=S27)
    compile(code, "notebook.py", "exec")
    line = next(line for line in code.splitlines() if line.startswith("TERMS = "))
    assert ast.literal_eval(line.split(" = ", 1)[1].split("  #")[0]) == S27  # written to the notebook's terms.yaml
    assert "OVERRIDES = [*OVERRIDES, f\"data.terms_file={WORKING / 'terms.yaml'}\"]" in code
    assert "TERMS = None" in notebook_script(CONFIG, [], [S27_SLUG], "run")
