"""The course's grading back-end (shared/spec/competitions.md, F26): the description `submit` sends, as it reaches
Kaggle (the fake server) and as the back-end's rule reads it; which submission `submissions` marks as graded; scores
in the leaderboard's unit (S26: EER in percent)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from facenext.competitions import TERMS, get_term
from facenext.config import config_from_dict
from facenext.data.layout import find_layout, list_classes
from facenext.data.sample import write_sample_competition
from facenext.grading import notebook_grading_lines, parse_grading_description
from facenext.run import RunDir
from facenext.submission import classification_ids, write_combined

from .conftest import assert_user_error, facenext, run

F26 = "hw-2-p-2-fall-2026-student-competition"
S26 = "11785-hw-2-p-2-face-verification-spring-2026"
LOGGED = "me/hw2p2/abc123"  # the W&B run that training recorded in the run's wandb.json


def backend_reads(description: str, tag: str) -> tuple[str, ...] | None:
    """The back-end's rule as the spec states it: the description, stripped, must start with `<tag>|WB=`; what
    follows, stripped, must split on `/` into exactly three non-empty parts, entity/project/run_id."""
    text = description.strip()
    if not text.startswith(tag + "|WB="):
        return None
    parts = text[len(tag + "|WB=") :].strip().split("/")
    return tuple(parts) if len(parts) == 3 and all(parts) else None


@pytest.mark.parametrize(
    ("description", "tag", "read"),
    [
        ("HW2P2|WB=ent/proj/run123", "HW2P2", ("ent", "proj", "run123")),
        ("  |WB= ent/proj/run123 \n", "", ("ent", "proj", "run123")),
        ("FaceNext submission.csv HW2P2|WB=ent/proj/run123", "HW2P2", None),  # what submit sent before: untracked
        ("HW2P2|WB=ent/proj/run123", "", None),  # F26's stored config has an empty tag: the prefix is |WB=
        ("|WB=ent/proj", "", None),
        ("|WB=ent//run123", "", None),
        ("|WB=a/b/c/d", "", None),
        ("HW2P2|WB=ent/proj/run123 final", "HW2P2", ("ent", "proj", "run123 final")),  # text after: in the run id
    ],
)
def test_the_rule_on_literal_descriptions(description, tag, read):
    assert parse_grading_description(description, tag) == read == backend_reads(description, tag)


def test_the_tag_is_a_term_setting():
    assert get_term("f26").grading_tag == ""  # the stored F26 back-end config sets none
    assert [t.key for t in TERMS.values() if t.grading_tag is not None] == ["f26"]


@pytest.fixture(scope="module")
def f26(tmp_path_factory) -> SimpleNamespace:
    """An F26 competition, a run behind a combined submission (1 M parameters) that logged to W&B, and the file."""
    root = tmp_path_factory.mktemp("grading")
    data = root / "data"
    write_sample_competition(data, "f26", identities=3, images_per_identity=5, size=16)
    layout = find_layout(data, "f26")
    run_dir = root / "runs" / "lean"
    folder = RunDir(run_dir)
    folder.write_config(config_from_dict({"data": {"root": str(data), "term": "f26"}}))
    folder.write_classes(list_classes(layout.train))
    folder.write_summary({"parameters": 1_000_000, "best_dev_acc": 0.5})
    folder.write_wandb_run(LOGGED, None)
    file = root / "submission.csv"
    ids, _ = classification_ids(layout)
    pairs = len(layout.test_pairs.read_text().splitlines())
    write_combined(file, layout, [0] * len(ids), [0.5] * pairs, "cls+ver-rows")
    file.with_suffix(".json").write_text(json.dumps({"runs": [str(run_dir)], "format": "cls+ver-rows"}))
    args = ["submit", file, "--competition", F26, "--data", data, "--runs", root / "runs"]
    return SimpleNamespace(data=data, run=run_dir, file=file, args=args)


def sent(fake) -> str:
    """The description that reached Kaggle."""
    return json.loads(fake.calls("CreateSubmission")[0])["submissionDescription"]


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def test_submit_sends_the_reference_and_nothing_else(fake, f26, tmp_path):
    # the command: it sent "FaceNext ... HW2P2|WB=ent/proj/run123", from which the back-end reads no run
    result = run(fake.env(tmp_path), *f26.args, "--wait", "0", "--tag", "HW2P2", "--wandb", "ent/proj/run123")
    assert result.returncode == 0, result.stderr
    assert sent(fake) == "HW2P2|WB=ent/proj/run123"
    assert backend_reads(sent(fake), "HW2P2") == ("ent", "proj", "run123") and warnings(result.stderr) == []

    fake.reset()  # no flags: the run's wandb.json and F26's own (empty) tag
    result = run(fake.env(tmp_path), *f26.args, "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert sent(fake) == f"|WB={LOGGED}" and backend_reads(sent(fake), "") == tuple(LOGGED.split("/"))


def test_submit_sends_the_message_as_given_and_warns_when_it_names_no_run(fake, f26, tmp_path):
    result = run(fake.env(tmp_path), *f26.args, "--wait", "0", "--message", "lean arcface, flip TTA")
    assert result.returncode == 0, result.stderr
    assert sent(fake) == "lean arcface, flip TTA" and backend_reads(sent(fake), "") is None
    (warning,) = warnings(result.stderr)
    assert "names no W&B run" in warning and f"|WB={LOGGED}" in warning  # and the reference the run logged


def test_submit_message_checked_with_the_tag_in_force(f26):
    pasted = "  HW2P2|WB=ent/proj/run123  "  # a later starter notebook's message, pasted with its spaces
    result = facenext(*f26.args, "--dry-run", "--message", pasted)
    assert result.returncode == 0 and repr(pasted) in result.stdout  # sent as given
    assert len(warnings(result.stderr)) == 1  # F26's stored tag is empty: the back-end would read no run
    result = facenext(*f26.args, "--dry-run", "--message", pasted, "--tag", "HW2P2")
    assert result.returncode == 0 and warnings(result.stderr) == []
    result = facenext(*f26.args, "--dry-run", "--message", "|WB=ent/proj/run123 final")
    (warning,) = warnings(result.stderr)
    assert "'ent/proj/run123 final'" in warning  # read, but with the trailing text inside the run id


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--tag", "HW2 P2"], ["--tag", "no spaces"]),
        (["--wandb", "not-a-run"], ["ENTITY/PROJECT/RUN_ID"]),
        (["--wandb", "a/b/c", "--message", "m"], ["--message and --wandb"]),
    ],
)
def test_submit_refuses_bad_grading_flags(f26, extra, words):
    assert_user_error(facenext(*f26.args, "--dry-run", *extra), *words)


def row(ref, description, public, private="", status="COMPLETE") -> dict:
    return {
        "ref": ref,
        "fileName": "submission.csv",
        "date": f"2026-11-0{ref}T10:00:00Z",
        "description": description,
        "status": status,
        "publicScore": public,
        "privateScore": private,
    }


def test_submissions_marks_the_graded_one_and_what_the_rule_reads(fake, tmp_path):
    fake.listing = [
        row(4, "|WB=me/p/pending", "", status="PENDING"),
        row(3, "HW2P2|WB=me/p/third", "0.93000"),  # best public score, but F26's prefix is |WB=
        row(2, "FaceNext: lean (dev score 0.9)", "0.85000", "0.95000"),  # best private score: graded, no reference
        row(1, "|WB=me/p/first", "0.91000", "0.90000"),
    ]
    result = run(fake.env(tmp_path), "submissions", F26)
    assert result.returncode == 0, result.stderr
    caption, header, *table = result.stdout.splitlines()
    assert "higher is better" in caption
    assert header.split() == ["date", "status", "public", "private", "W&B", "run", "description"]
    lines = {r["description"]: next(line for line in table if line.endswith(r["description"])) for r in fake.listing}
    assert [d for d, line in lines.items() if line.startswith("*")] == ["FaceNext: lean (dev score 0.9)"]
    # the W&B run column: what the rule reads from each description (F26: tag "")
    read = {d: line[: -len(d)].split()[-1] for d, line in lines.items()}
    assert read == {
        "|WB=me/p/pending": "me/p/pending",
        "HW2P2|WB=me/p/third": "-",
        "FaceNext: lean (dev score 0.9)": "-",
        "|WB=me/p/first": "me/p/first",
    }
    assert {d: backend_reads(d, "") for d in read} == {
        d: None if r == "-" else tuple(r.split("/")) for d, r in read.items()
    }
    (warning,) = warnings(result.stderr)
    assert "2026-11-02" in warning and "names no W&B run" in warning and "--wandb" in warning


def test_submissions_show_s26_eer_in_percent_lower_is_better(fake, tmp_path):
    fake.listing = [row(2, "b", "0.0412"), row(1, "a", "0.0336752")]
    result = run(fake.env(tmp_path), "submissions", S26)
    assert result.returncode == 0, result.stderr
    caption, _, second, first = result.stdout.splitlines()
    assert "EER in percent, lower is better" in caption
    assert first.startswith("*") and "3.36752" in first.split() and first.endswith("a")  # as the leaderboard shows
    assert not second.startswith("*") and "4.12" in second.split()


def test_notebook_prints_the_exact_description(f26, tmp_path):
    f26_term = get_term("f26")
    (line,) = notebook_grading_lines(f26.run, f26_term)[1:]
    assert line == f"|WB={LOGGED}" and backend_reads(line, "") == tuple(LOGGED.split("/"))
    assert notebook_grading_lines(f26.run, f26_term, "HW2P2")[1] == f"HW2P2|WB={LOGGED}"
    unlogged = Path(tmp_path / "run")
    unlogged.mkdir()
    advice = " ".join(notebook_grading_lines(unlogged, f26_term))
    assert "grading needs a W&B run" in advice and "--wandb" in advice and "WANDB_API_KEY" in advice
    assert notebook_grading_lines(unlogged, get_term("f23")) == []  # F23 is not graded by a W&B reference
