"""User errors: one line on stderr that says what to do, exit status 2, no traceback, nothing overwritten."""

import subprocess
import sys

import pytest

from .conftest import ROOT


def facenext(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "facenext", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def assert_user_error(result, *words, allow_warnings=False):
    """Exit 2, no traceback, and one error line holding ``words`` (warning lines beside it only when allowed)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if allow_warnings:
        lines = [line for line in lines if "warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("facenext: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_data_folder(tmp_path):
    result = facenext("train", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "run", f"data.root={tmp_path}/nope")
    assert_user_error(result, "does not exist", "make download")


def test_folder_without_a_competition(tmp_path):
    (tmp_path / "stuff").mkdir()
    result = facenext("train", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "run", f"data.root={tmp_path}")
    assert_user_error(result, "no competition found")


@pytest.mark.parametrize(("override", "words"), [("train.epochz=3", ["train.epochz"]), ("train.epochs=x", ["int"])])
def test_bad_config_values(tmp_path, override, words):
    assert_user_error(facenext("train", ROOT / "configs" / "demo.yaml", override), *words)


def test_missing_config_file(tmp_path):
    assert_user_error(facenext("train", tmp_path / "nope.yaml"), "not found")


def test_a_file_that_is_not_a_checkpoint_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "classes.json"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    (run / "best.pt").write_bytes(b"this is not a checkpoint")
    assert_user_error(facenext("predict", run, "--out", tmp_path / "out"), "not a FaceNext checkpoint")
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_a_pickle_that_runs_code_is_refused(trained_run, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "classes.json"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    (run / "best.pt").write_bytes(pickle.dumps({"model": Evil()}))
    result = facenext("predict", run, "--out", tmp_path / "out")
    assert_user_error(result, "not a FaceNext checkpoint")
    assert "pwned" not in result.stdout


def test_not_a_run_folder(tmp_path):
    assert_user_error(facenext("predict", tmp_path), "not a training run")
