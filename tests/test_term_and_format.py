"""Which term a download is, and which format its combined (F26) file takes, on layouts written from the spec.

The folders are named exactly as the zips unpack (``<slug>/hw2p2_data/...``, Kaggle's ``/kaggle/input/<slug>/``),
with no marker of ours unless a test says so; the sample submissions are literal lines.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facenext.cli import main
from facenext.data.layout import AmbiguousData, find_layout

from .test_competitions import current_layout

F26_SLUG = "hw-2-p-2-fall-2026-student-competition"
F26_LATE = "hw-2-p-2-fall-2026-slack-competition"
S26_SLUG = "11785-hw-2-p-2-face-verification-spring-2026"
# S26 shipped cls_data/test/labels.txt ("<image_file> <class_id>"), F26 none.
S26_TEST_LABELS = "test_000000.jpg 4521\ntest_000001.jpg 17\ntest_000002.jpg 0\n"


def unzipped(parent: Path, term: str, test_split: bool = True) -> Path:
    """``parent/hw2p2_data/`` as the term's zip unpacks, without any marker; optionally without a test split."""
    folder = current_layout(parent / "hw2p2_data", test_labels=S26_TEST_LABELS if term == "s26" else None)
    if not test_split:
        shutil.rmtree(folder / "cls_data" / "test")
    return folder


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
