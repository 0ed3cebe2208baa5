"""`facenext download` and `facenext submit` driving the real kaggle client against a fake server on this machine."""

from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path

import pytest

from facenext.data.layout import find_layout
from facenext.data.sample import write_sample_competition
from facenext.submission import classification_ids

from .conftest import assert_user_error, run

SLUG = "my-comp"


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kaggle") / "comp"
    write_sample_competition(out, identities=3, images_per_identity=5, size=32)
    return out


@pytest.fixture(scope="module")
def zip_bytes(competition) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(competition.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(competition).as_posix())
    return buf.getvalue()


def download(fake, tmp_path, *extra, env=None):
    return run(env or fake.env(tmp_path), "download", SLUG, "--out", tmp_path / "data", *extra)


def assert_nothing_complete(tmp_path):
    """No folder that looks like a finished download, no partial folder, no leftover temporary download."""
    data = tmp_path / "data"
    assert not (data / SLUG / ".complete").exists()
    leftovers = [p.name for p in data.iterdir()] if data.exists() else []
    assert leftovers == [], leftovers


def test_download_extracts_and_marks_complete(fake, zip_bytes, tmp_path):
    fake.zip_bytes = zip_bytes
    result = download(fake, tmp_path)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "data" / SLUG
    assert (target / ".complete").is_file()
    assert find_layout(target).term.key == "f23"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [SLUG]  # no .partial, no temporary zip
    assert json.loads(fake.calls("DownloadDataFiles")[0]) == {"competitionName": SLUG}
    assert "extracted" in result.stdout

    fake.reset()
    again = download(fake, tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert fake.requests == []  # nothing asked of Kaggle the second time


def test_force_downloads_again(fake, zip_bytes, tmp_path):
    fake.zip_bytes = zip_bytes
    assert download(fake, tmp_path).returncode == 0
    fake.reset()
    fake.zip_bytes = zip_bytes
    result = download(fake, tmp_path, "--force")
    assert result.returncode == 0, result.stderr
    assert len(fake.calls("DownloadDataFiles")) == 1 and (tmp_path / "data" / SLUG / ".complete").is_file()


def test_bad_credentials_401(fake, tmp_path):
    fake.fail["DownloadDataFiles"] = 401
    assert_user_error(download(fake, tmp_path), "401", "kaggle.json", "KAGGLE_USERNAME")
    assert_nothing_complete(tmp_path)


def test_rules_not_accepted_403(fake, tmp_path):
    fake.fail["DownloadDataFiles"] = 403
    assert_user_error(download(fake, tmp_path), "403", f"https://www.kaggle.com/competitions/{SLUG}/rules")
    assert_nothing_complete(tmp_path)


def test_network_down(fake, tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = download(fake, tmp_path, env=fake.env(tmp_path, port=port))
    assert_user_error(result, "connection", "retry")
    assert_nothing_complete(tmp_path)


def test_truncated_zip(fake, zip_bytes, tmp_path):
    fake.zip_bytes = zip_bytes[: len(zip_bytes) // 2]
    assert_user_error(download(fake, tmp_path), "--force")
    assert_nothing_complete(tmp_path)


def test_zip_slip_is_refused(fake, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil", "pwned")
    fake.zip_bytes = buf.getvalue()
    assert_user_error(download(fake, tmp_path), "../evil")
    assert_nothing_complete(tmp_path)
    assert not (tmp_path / "evil").exists()


def test_symlink_entry_is_refused(fake, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = (0o120777 << 16) | 0
        zf.writestr(link, "/etc/passwd")
    fake.zip_bytes = buf.getvalue()
    assert_user_error(download(fake, tmp_path), "link", "symbolic")
    assert_nothing_complete(tmp_path)


def test_no_credentials(fake, tmp_path):
    env = fake.env(tmp_path)
    del env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    assert_user_error(download(fake, tmp_path, env=env), "kaggle.com/settings", "kaggle.json", "KAGGLE_USERNAME")
    assert fake.requests == [] and not (tmp_path / "kaggle-config").exists()  # the client was never imported


def test_kaggle_json_readable_by_others_warns(fake, zip_bytes, tmp_path):
    env = fake.env(tmp_path)
    del env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    config = tmp_path / "kaggle-config"
    config.mkdir()
    (config / "kaggle.json").write_text(json.dumps({"username": "tester", "key": "secret-value-123"}))
    (config / "kaggle.json").chmod(0o644)
    fake.zip_bytes = zip_bytes
    result = download(fake, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "chmod 600" in result.stderr
    assert "secret-value-123" not in result.stdout + result.stderr


def test_notebook_input_is_used_as_is(tmp_path, monkeypatch):
    from facenext.kaggle import download as download_fn

    mounted = tmp_path / "kaggle" / "input" / SLUG
    mounted.mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert download_fn(SLUG, tmp_path / "data", kaggle_root=tmp_path / "kaggle") == mounted
    assert not (tmp_path / "data").exists()


def submission_file(competition, path: Path) -> Path:
    """A classification file for the sample competition, and (unless there is one) the record `predict` writes
    beside it: the run behind it, whose summary gives its parameters for the limit."""
    ids, _ = classification_ids(find_layout(competition))
    path.write_text("id,label\n" + "".join(f"{i},{n % 3}\n" for n, i in enumerate(ids)))
    if not path.with_suffix(".json").exists():
        run = path.parent / "runs" / "tiny"
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({"parameters": 1_000_000, "best_dev_acc": 0.5}))
        path.with_suffix(".json").write_text(json.dumps({"runs": [str(run)]}))
    return path


def test_submit_uploads_file_and_message(fake, competition, tmp_path):
    csv = submission_file(competition, tmp_path / "submission.csv")
    result = run(
        fake.env(tmp_path), "submit", csv, "--competition", SLUG, "--message", "lean convnext, flip TTA", "--data",
        competition,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "submitted" in result.stdout
    puts = [body for method, path, body in fake.requests if method == "PUT"]
    assert puts == [csv.read_bytes()]
    start = json.loads(fake.calls("StartSubmissionUpload")[0])
    assert start["competitionName"] == SLUG and start["fileName"] == "submission.csv"
    create = json.loads(fake.calls("CreateSubmission")[0])
    assert create["submissionDescription"] == "lean convnext, flip TTA"
    assert create["blobFileTokens"] == "blob-token-1"


def test_submit_dry_run_uploads_nothing(fake, competition, tmp_path):
    csv = submission_file(competition, tmp_path / "submission.csv")
    result = run(
        fake.env(tmp_path), "submit", csv, "--competition", SLUG, "--message", "m", "--data", competition, "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert fake.requests == []


def test_submit_checks_against_the_test_images(fake, competition, tmp_path):
    csv = submission_file(competition, tmp_path / "submission.csv")
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")  # one test image missing
    result = run(fake.env(tmp_path), "submit", csv, "--competition", SLUG, "--message", "m", "--data", competition)
    assert_user_error(result, "missing id", "000002.jpg")
    assert fake.requests == []


def test_submit_refuses_duplicate_ids(fake, tmp_path):
    csv = tmp_path / "submission.csv"
    csv.write_text("id,label\n000000.jpg,1\n000000.jpg,2\n")
    result = run(fake.env(tmp_path), "submit", csv, "--competition", SLUG, "--message", "m", cwd=tmp_path)
    assert_user_error(result, "duplicate ids")
    assert fake.requests == []


def test_submit_403(fake, competition, tmp_path):
    fake.fail["StartSubmissionUpload"] = 403
    csv = submission_file(competition, tmp_path / "submission.csv")
    result = run(fake.env(tmp_path), "submit", csv, "--competition", SLUG, "--message", "m", "--data", competition)
    assert_user_error(result, "403", f"https://www.kaggle.com/competitions/{SLUG}/rules")


def submit(fake, competition, tmp_path, *extra, message=("--message", "m")):
    csv = submission_file(competition, tmp_path / "submission.csv")
    args = ["submit", csv, "--competition", SLUG, *message, "--data", competition, "--poll-interval", "0.05", *extra]
    return run(fake.env(tmp_path), *args)


def test_submit_follows_the_submission_until_scored(fake, competition, tmp_path):
    fake.pending_polls = 2
    result = submit(fake, competition, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "public score 0.91234" in result.stdout
    listings = fake.calls("ListSubmissions")
    assert len(listings) == 3  # pending, pending, complete
    assert json.loads(listings[0])["competitionName"] == SLUG


def test_submit_still_pending_after_wait(fake, competition, tmp_path):
    fake.pending_polls = 10_000
    result = submit(fake, competition, tmp_path, "--wait", "0.3")
    assert result.returncode == 0, result.stderr
    assert "still pending" in result.stdout and f"facenext submissions {SLUG}" in result.stdout
    assert 1 <= len(fake.calls("ListSubmissions")) <= 8


def test_submit_wait_0_does_not_poll(fake, competition, tmp_path):
    result = submit(fake, competition, tmp_path, "--wait", "0")
    assert result.returncode == 0, result.stderr
    assert fake.calls("ListSubmissions") == [] and f"facenext submissions {SLUG}" in result.stdout


def test_submit_scoring_error(fake, competition, tmp_path):
    fake.submission_error = "Evaluation Exception: wrong number of rows"
    assert_user_error(submit(fake, competition, tmp_path), "could not score", "wrong number of rows")


def test_submit_401(fake, competition, tmp_path):
    fake.fail["StartSubmissionUpload"] = 401
    assert_user_error(submit(fake, competition, tmp_path), "401", "kaggle.json")
    assert fake.calls("CreateSubmission") == []


def test_submit_server_error_500(fake, competition, tmp_path):
    fake.fail["CreateSubmission"] = 500
    assert_user_error(submit(fake, competition, tmp_path), "500", "retry")


def test_submit_default_message_names_runs_and_dev_scores(fake, competition, tmp_path):
    for name, acc in (("a", 0.875), ("b", 0.9)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps({"best_dev_acc": acc, "parameters": 10}))
    runs = [str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")]
    (tmp_path / "submission.json").write_text(json.dumps({"runs": runs}))  # the ensemble's summary
    result = submit(fake, competition, tmp_path, "--wait", "0", message=())
    assert result.returncode == 0, result.stderr
    create = json.loads(fake.calls("CreateSubmission")[0])
    assert create["submissionDescription"] == "FaceNext: a (dev 0.8750), b (dev 0.9000)"


def test_default_message_without_summaries(tmp_path):
    from facenext.kaggle import default_message

    assert default_message(tmp_path / "x" / "submission.csv", tmp_path / "runs") == "FaceNext submission.csv"
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "summary.json").write_text(json.dumps({"best_dev_acc": 0.5}))
    assert default_message(tmp_path / "x" / "submission.csv", tmp_path / "runs") == "FaceNext: x (dev 0.5000)"


def test_submissions_lists_a_table(fake, tmp_path):
    result = run(fake.env(tmp_path), "submissions", SLUG)
    assert result.returncode == 0, result.stderr
    caption, header, row = result.stdout.splitlines()
    assert caption == f"{SLUG}: scores as Kaggle reports them"  # an unknown slug: no unit, no graded mark
    assert header.split()[:4] == ["date", "status", "public", "private"]
    assert row.split()[:5] == ["2026-01-02", "03:04", "complete", "0.91234", "-"] and row.endswith("lean convnext")


def test_submissions_403(fake, tmp_path):
    fake.fail["ListSubmissions"] = 403
    assert_user_error(run(fake.env(tmp_path), "submissions", SLUG), "403", "rules")
