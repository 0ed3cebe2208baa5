"""Which term a download is, and which format its combined (F26) file takes, on layouts written from the spec.

The folders are named exactly as the zips unpack (``<slug>/hw2p2_data/...``, Kaggle's ``/kaggle/input/<slug>/``),
with no marker of ours unless a test says so; the sample submissions are literal lines.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from facenext.checkpoint import save_checkpoint
from facenext.cli import main
from facenext.config import config_from_dict
from facenext.data.layout import AmbiguousData, find_layout
from facenext.errors import UserError
from facenext.run import RunDir
from facenext.submission import classification_ids, write_combined

from .conftest import (
    ROOT,
    STEMS_SAMPLE,
    TINY_MODEL,
    TINY_TRAIN,
    assert_user_error,
    facenext,
    fake_outputs,
    fake_run,
    unzipped,
)

F26_SLUG = "hw-2-p-2-fall-2026-student-competition"
F26_LATE = "hw-2-p-2-fall-2026-slack-competition"
S26_SLUG = "11785-hw-2-p-2-face-verification-spring-2026"


# ---------------------------------------------------------------------------------------------------------------
# Which term: a slug in the path, then the test split
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "term"), [(F26_SLUG, "f26"), (F26_LATE, "f26"), (S26_SLUG, "s26")], ids=["f26", "f26-late", "s26"]
)
@pytest.mark.parametrize("test_split", [True, False], ids=["test-split", "no-test-split"])
def test_the_slug_folder_a_download_was_unzipped_into_names_the_term(tmp_path, capsys, slug, term, test_split):
    # `kaggle competitions download SLUG && unzip SLUG.zip -d SLUG`: no .complete marker anywhere
    folder = unzipped(tmp_path / "x" / slug, term, test_split)
    for root in (tmp_path / "x", tmp_path / "x" / slug, folder):  # the slug below, at, or above the data root
        layout = find_layout(root)
        assert (layout.term.key, layout.root) == (term, folder)
    assert main(["check-data", str(tmp_path / "x")]) == (2 if term == "f26" and not test_split else 0)
    assert f"term {term} " in capsys.readouterr().out  # F26 without its test images: named, and a problem


@pytest.mark.parametrize("slug", [F26_SLUG, S26_SLUG])
def test_a_kaggle_notebook_input_folder_names_the_term(tmp_path, capsys, slug):
    term = "f26" if slug == F26_SLUG else "s26"
    inputs = tmp_path / "kaggle" / "input"
    folder = unzipped(inputs / slug, term)
    toolkit = inputs / "facenext-toolkit"  # the toolkit dataset a FaceNext notebook attaches beside it
    (toolkit / "configs").mkdir(parents=True)
    (toolkit / "configs" / "f26_lean_convnext.yaml").write_text("data: {term: f26}\n")
    assert find_layout(inputs).root == folder and find_layout(inputs).term.key == term
    assert find_layout(folder).term.key == term  # data.root=/kaggle/input/<slug>/hw2p2_data: the slug is above it
    assert main(["check-data", str(inputs)]) == 0
    assert f"term {term} " in capsys.readouterr().out


def test_without_a_slug_the_test_split_tells_s26_from_f26(tmp_path, capsys):
    assert find_layout(unzipped(tmp_path / "a", "s26").parent).term.key == "s26"  # test/labels.txt
    assert find_layout(unzipped(tmp_path / "b", "f26").parent).term.key == "f26"  # none
    unzipped(tmp_path / "c", "f26", test_split=False)  # nothing tells them apart: refused, naming both
    assert main(["check-data", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err
    assert "terms s26, f26 share" in error and "--term" in error and len(error.strip().splitlines()) == 1
    assert find_layout(tmp_path / "c", "f26").term.key == "f26"


def test_a_named_term_is_not_made_ambiguous_by_a_download_named_as_another_term(tmp_path, capsys):
    data = tmp_path / "data"
    # `facenext download` of S26 (its marker names the slug) beside F26 unzipped by hand into a folder of any name
    s26 = unzipped(data / "spring", "s26", test_split=False)  # only its marker says S26
    (data / "spring" / ".complete").write_text(json.dumps({"slug": S26_SLUG, "files": 0, "zip_bytes": 0}))
    f26 = unzipped(data / "fall", "f26")  # F26's test split: images, no labels.txt
    assert find_layout(data, "f26").root == f26 and find_layout(data, "s26").root == s26
    with pytest.raises(AmbiguousData, match="2 competitions under"):
        find_layout(data)  # with no term named, two competitions are still two
    assert main(["check-data", str(data), "--term", "f26"]) == 0
    assert f"term f26 (Fall 2026) under {f26}\n" in capsys.readouterr().out
    shutil.rmtree(f26 / "cls_data" / "test")  # now nothing says which term `fall` is
    assert find_layout(data, "f26").root == f26
    with pytest.raises(AmbiguousData, match="2 competitions under"):
        find_layout(data, "s26")  # `fall` could be the S26 named: never a silent pick


def test_a_download_its_slug_or_marker_names_as_another_term_is_not_taken_as_the_term_named(tmp_path):
    data = tmp_path / "data"
    s26 = unzipped(data / S26_SLUG, "s26")  # the wrong competition downloaded, then trained as F26
    assert find_layout(data, "s26").root == s26
    assert_user_error(
        facenext("check-data", data, "--term", "f26"), "is the S26 competition", "not F26", "data.term to s26"
    )
    marked = unzipped(tmp_path / "other" / "spring", "s26", test_split=False)  # named by the marker alone
    (marked.parent / ".complete").write_text(json.dumps({"slug": S26_SLUG, "files": 0, "zip_bytes": 0}))
    with pytest.raises(UserError, match="named by its marker"):
        find_layout(tmp_path / "other", "f26")


# ---------------------------------------------------------------------------------------------------------------
# The combined file's format: a sample in the download decides
# ---------------------------------------------------------------------------------------------------------------

# Plausible F26 samples (the spec did not find the real columns), for the literal layout's 3 test images
# (test_000000.jpg ...) and 2 test pairs ("q6HIqRrx.jpg wxMgJZO4.jpg", "Zk3mQ0aB.jpg q6HIqRrx.jpg").
ROWS_SAMPLE = "ID,Label\ntest_000000.jpg,0\ntest_000001.jpg,0\ntest_000002.jpg,0\n0,0\n1,0\n"  # = cls+ver-rows
NAMED_PAIRS_SAMPLE = (  # pairs named by their images, in another order than test_pairs.txt
    "ID,Label\nZk3mQ0aB.jpg q6HIqRrx.jpg,0\nq6HIqRrx.jpg wxMgJZO4.jpg,0\ntest_000000.jpg,0\ntest_000001.jpg,0\n"
    "test_000002.jpg,0\n"
)
REVERSED_SAMPLE = "ID,Label\ntest_000000.jpg,0\ntest_000001.jpg,0\ntest_000002.jpg,0\n1,0\n0,0\n"
LABELS, SCORES = [4521, 17, 0], [0.75, -0.25]


def f26_download(tmp_path: Path, sample: str | None, where: str = "above") -> Path:
    """``x/<slug>/hw2p2_data/`` unzipped, with ``sample`` beside ``hw2p2_data/`` (Kaggle's zip root) or inside it."""
    folder = unzipped(tmp_path / "x" / F26_SLUG, "f26")
    if sample is not None:
        (folder.parent if where == "above" else folder).joinpath("sample_submission.csv").write_text(sample)
    return tmp_path / "x"


def test_a_sample_beside_hw2p2_data_decides_and_a_format_that_disagrees_is_refused(tmp_path):
    data = f26_download(tmp_path, STEMS_SAMPLE)
    layout = find_layout(data)
    assert layout.samples == (data / F26_SLUG / "sample_submission.csv",)
    path = tmp_path / "submission.csv"
    assert write_combined(path, layout, LABELS, SCORES).name == "sample"
    assert path.read_text() == "id,label\ntest_000000,4521\ntest_000001,17\ntest_000002,0\n1,0.75\n2,-0.25\n"
    other = tmp_path / "other.csv"
    for fmt, why in (
        ("cls+ver-rows", "cls+ver-rows writes the header ID,Label, the sample id,label"),
        ("pairs", "pairs is not a format of a file with both parts"),
    ):
        with pytest.raises(UserError) as error:
            write_combined(other, layout, LABELS, SCORES, fmt, fmt_source=f"--format {fmt}")
        assert str(layout.samples[0]) in str(error.value) and f"--format {fmt} disagrees ({why})" in str(error.value)
    assert not other.exists()
    result = facenext("check-submission", path, "--data", data, "--format", "cls+ver-rows")  # the CLI: one line
    assert_user_error(result, "sample_submission.csv in the download decides", "--format cls+ver-rows disagrees")
    assert facenext("check-submission", path, "--data", data).returncode == 0
    # a named format that writes the sample's very file agrees with it
    (data / F26_SLUG / "sample_submission.csv").write_text(ROWS_SAMPLE)
    assert write_combined(path, find_layout(data), LABELS, SCORES, "cls+ver-rows").name == "sample"
    assert path.read_text() == ROWS_SAMPLE.replace(",0\n", ",{}\n").format(4521, 17, 0, 0.75, -0.25)


def test_pair_rows_follow_their_ids_and_a_sample_in_another_order_is_refused(tmp_path):
    data = f26_download(tmp_path, NAMED_PAIRS_SAMPLE, where="inside")
    layout = find_layout(data)
    path = tmp_path / "submission.csv"
    write_combined(path, layout, LABELS, SCORES)  # each pair's score on the row that names its images
    assert path.read_text() == (
        "ID,Label\nZk3mQ0aB.jpg q6HIqRrx.jpg,-0.25\nq6HIqRrx.jpg wxMgJZO4.jpg,0.75\ntest_000000.jpg,4521\n"
        "test_000001.jpg,17\ntest_000002.jpg,0\n"
    )
    sample = layout.samples[0]
    for bad in (ROWS_SAMPLE.replace("\n1,0", "\n2,0"), STEMS_SAMPLE.replace("1,0.0", "pair0,0.0"), REVERSED_SAMPLE):
        sample.write_text(bad)
        with pytest.raises(UserError, match=r"neither 0\.\.1 nor 1\.\.2 in test_pairs\.txt order, nor each pair's"):
            write_combined(path, layout, LABELS, SCORES)
    result = facenext("check-submission", path, "--data", data)  # REVERSED_SAMPLE
    assert_user_error(result, "pair rows have ids 1, 0", "cannot tell which test image or pair each row is")


def test_a_sample_whose_pair_ids_run_backwards_is_refused(tmp_path):
    folder = unzipped(tmp_path / "x" / F26_SLUG, "f26")
    names = ["q6HIqRrx.jpg", "wxMgJZO4.jpg", "Zk3mQ0aB.jpg", "p9LtY2cE.jpg"]
    (folder / "test_pairs.txt").write_text("".join(f"{names[i % 4]} {names[(i + 1) % 4]}\n" for i in range(30)))
    images = "".join(f"test_00000{k}.jpg,0\n" for k in range(3))
    sample = folder.parent / "sample_submission.csv"
    sample.write_text("ID,Label\n" + images + "".join(f"{i},0\n" for i in range(29, -1, -1)))
    with pytest.raises(UserError, match=r"pair rows have ids 29, 28, 27, \.\.\.: neither 0\.\.29 nor 1\.\.30"):
        write_combined(tmp_path / "s.csv", find_layout(tmp_path / "x"), LABELS, list(range(30)))
    sample.write_text("ID,Label\n" + images + "".join(f"{i},0\n" for i in range(30)))
    write_combined(tmp_path / "s.csv", find_layout(tmp_path / "x"), LABELS, [i / 100 for i in range(30)])
    assert (tmp_path / "s.csv").read_text().splitlines()[-1] == "29,0.29"


def test_a_config_format_that_disagrees_with_the_sample_is_refused_naming_both(tmp_path):
    data = f26_download(tmp_path, STEMS_SAMPLE)
    run = fake_run(tmp_path / "runs", "r", 1_000_000, data)
    RunDir(run).write_config(
        config_from_dict({"data": {"root": str(data), "term": "f26"}, "predict": {"submission_format": "cls+ver-rows"}})
    )
    fake_outputs(tmp_path / "p", run, data, 1.0, 0)
    out = tmp_path / "ensemble.csv"
    result = facenext("ensemble", run, "--predictions", tmp_path / "p", "--out", out)
    assert_user_error(result, f"{data / F26_SLUG / 'sample_submission.csv'} in the download decides")
    assert f"predict.submission_format: cls+ver-rows in {run / 'config.yaml'} disagrees" in result.stderr
    assert not out.exists()
    result = facenext("ensemble", run, "--predictions", tmp_path / "p", "--out", out, "--format", "sample")
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("id,label\ntest_000000,")


# ---------------------------------------------------------------------------------------------------------------
# The README's F26 path, as written, on a sample competition
# ---------------------------------------------------------------------------------------------------------------

NEEDS_KAGGLE = {"download", "submit", "submissions", "kernel", "kernel-status", "kernel-output"}


def readme_f26_commands() -> list[list[str]]:
    """The commands of the README's F26 block, split as a shell would (one list per command)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```bash", text.index("The Fall 2026 competition is one Kaggle competition"))
    block = text[start + len("```bash") : text.index("```", start + 1)].replace("\\\n", " ")
    lines = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines()]
    commands: list[list[str]] = []
    for words in filter(None, lines):
        while "&&" in words:
            cut = words.index("&&")
            commands.append(words[:cut])
            words = words[cut + 1 :]
        commands.append(words)
    return commands


@pytest.fixture(scope="module")
def f26_path(tmp_path_factory):
    """A folder where every command of the README's F26 path ran as written (train: tiny overrides), in order."""
    home = tmp_path_factory.mktemp("f26_path")
    shutil.copytree(ROOT / "configs", home / "configs")
    cwd = os.getcwd()
    os.chdir(home)
    try:
        assert facenext("sample-data", "data", "--term", "f26", "--identities", "3", "--images-per-identity", "5",
                        "--size", "32").returncode == 0  # fmt: skip
        ran = []
        for words in readme_f26_commands():
            if words[0] == "make" and words[1] == "train":
                config = words[2].removeprefix("CONFIG=")
                words = ["facenext", "train", config, "--out", f"runs/{Path(config).stem}", *TINY_MODEL, *TINY_TRAIN]
                words += ["data.image_size=32", "train.epochs=1"]
            if words[0] == "make" or words[1] in NEEDS_KAGGLE:
                continue  # the real download; Kaggle's own commands are tested against the fake server elsewhere
            if words[1] == "ensemble":  # three runs to choose from: copies of the one trained
                for name in ("a", "b", "c"):
                    shutil.copytree("runs/f26_lean_convnext", f"runs/{name}", dirs_exist_ok=True)
                    shutil.copytree("submissions/f26_lean_convnext", f"submissions/{name}", dirs_exist_ok=True)
            result = facenext(*words[1:])
            assert result.returncode == 0, f"{' '.join(words)}: {result.stderr}"
            ran.append(words[1])
        yield home, ran
    finally:
        os.chdir(cwd)


def test_every_command_of_the_readme_f26_path_works_as_written(f26_path):
    home, ran = f26_path
    assert ran == ["check-data", "info", "train", "predict", "predict", "verify", "ensemble"]
    for name in ("submissions/f26_lean_convnext/submission.csv", "submissions/f26.csv"):
        assert facenext("check-submission", home / name, "--data", home / "data").returncode == 0
    assert json.loads((home / "submissions" / "f26.json").read_text())["format"] == "cls+ver-rows"


def test_parts_from_two_different_weights_are_refused_with_the_command_that_fixes_it(f26_path, tmp_path):
    home, _ = f26_path
    run, out = tmp_path / "run", tmp_path / "p" / "run"
    shutil.copytree(home / "runs" / "f26_lean_convnext", run)
    shutil.copytree(home / "submissions" / "f26_lean_convnext", out)  # test logits + pair scores, one model's
    good = (out / "submission.csv").read_bytes()
    state = torch.load(run / "best.pt", weights_only=True)  # more training: other weights in best.pt
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = state["model"][name] + 1
    save_checkpoint(run / "best.pt", state)
    data = ["--data", home / "data"]
    result = facenext("predict", run, "--out", out, *data)  # new test logits beside the old pair scores
    assert_user_error(result, "come from different weights", f"`facenext verify {run} --out {out}`")
    assert (out / "submission.csv").read_bytes() == good  # the last file written from one model stays
    ensemble = ["ensemble", run, "--predictions", tmp_path / "p", "--out", tmp_path / "e.csv", *data]
    assert_user_error(facenext(*ensemble), f"`facenext verify {run} --out {out}`")
    assert facenext("verify", run, "--out", out, *data).returncode == 0  # the command named: both parts agree
    assert (out / "submission.csv").read_bytes() != good
    assert facenext(*ensemble).returncode == 0


def test_predict_follows_a_sample_and_refuses_the_config_format_that_disagrees(f26_path, tmp_path):
    home, _ = f26_path
    run, out, data = tmp_path / "run", tmp_path / "out", tmp_path / "data"
    shutil.copytree(home / "runs" / "f26_lean_convnext", run)
    shutil.copytree(home / "submissions" / "f26_lean_convnext", out)
    shutil.copytree(home / "data", data)
    layout = find_layout(data)
    images, _ = classification_ids(layout)
    pairs = len(layout.test_pairs.read_text().splitlines())
    rows = [Path(i).stem for i in images] + [str(k) for k in range(1, pairs + 1)]  # a sample FaceNext follows
    (layout.root / "sample_submission.csv").write_text("id,label\n" + "".join(f"{r},0\n" for r in rows))
    result = facenext("predict", run, "--out", out, "--data", data)  # configs/f26_*.yaml name cls+ver-rows
    assert_user_error(result, "sample_submission.csv in the download decides", f"{run / 'config.yaml'} disagrees")
    assert facenext("predict", run, "--out", out, "--data", data, "--format", "sample").returncode == 0
    assert (out / "submission.csv").read_text().splitlines()[0] == "id,label"
    assert facenext("check-submission", out / "submission.csv", "--data", data).returncode == 0
