"""Faults: kills at many points, damaged checkpoints, a full disk, and secrets that must not leak."""

import os
import random
import resource
import signal
import subprocess
import sys
import time

import torch

from facenext.checkpoint import load_checkpoint

from . import conftest
from .conftest import CONFIG, TINY_TRAIN, facenext, facenext_process, run_with_weights, train_args

DETERMINISTIC = ["train.deterministic=true", "train.recovery_minutes=0.00001", "train.plot=false"]


def cli_process(args, limit_bytes=None):
    """A separate process, here for kills and for a file size limit (a full disk) that holds for the whole process."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, writes fail with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return facenext_process(*args, preexec_fn=limit if limit_bytes else None)


def checkpoint_stamp(run):
    return tuple((run / n).stat().st_mtime_ns if (run / n).exists() else 0 for n in ("recovery.pt", "last.pt"))


def same_weights(a, b):
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ten_kills_at_random_moments_resume_to_the_uninterrupted_weights(sample, tmp_path):
    extra = [*DETERMINISTIC, "train.epochs=6", "model.drop_path_rate=0.1"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert cli_process(train_args(sample, reference, *extra)).returncode == 0
    rng = random.Random(0)
    kills = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    while kills < 10:
        process = subprocess.Popen(
            [sys.executable, "-m", "facenext", *train_args(sample, run, *extra)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        before = checkpoint_stamp(run)
        while process.poll() is None and checkpoint_stamp(run) == before:
            time.sleep(0.01)
        if process.poll() is not None:  # the run finished before this kill
            break
        time.sleep(rng.uniform(0, 0.15))  # sometimes lands in the middle of the next checkpoint write
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills == 10, "the run was too short to be killed ten times"
    # A kill inside a write leaves a partial temporary file beside intact checkpoints (the rename never happened);
    # random kills hit that window only sometimes, so the state is also made here for certain.
    latest = run / "recovery.pt" if (run / "recovery.pt").exists() else run / "last.pt"
    (run / ".last.pt.killed.tmp").write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])
    final = cli_process(train_args(sample, run, *extra))
    assert final.returncode == 0, final.stderr
    assert same_weights(run / "last.pt", reference / "last.pt")
    assert not list(run.glob(".*.tmp*"))


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(sample, tmp_path):
    extra = [*DETERMINISTIC, "train.epochs=2"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert facenext(*train_args(sample, reference, *extra)).returncode == 0
    assert facenext(*train_args(sample, run, *extra[:-1], "train.epochs=1")).returncode == 0
    assert facenext(*train_args(sample, run, *extra)).returncode == 0
    assert (run / "last.pt.prev").exists()
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a disk error cut it in half

    result = facenext(*train_args(sample, run, *extra[:-1], "train.epochs=2"))
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "last.pt" in result.stderr
    assert same_weights(run / "last.pt", reference / "last.pt"), "epoch 2 was trained again from epoch 1"


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(sample, tmp_path):
    run = tmp_path / "run"
    assert facenext(*train_args(sample, run, *DETERMINISTIC, "train.epochs=1")).returncode == 0
    before = (run / "last.pt").read_bytes()
    result = cli_process(train_args(sample, run, *DETERMINISTIC, "train.epochs=2"), limit_bytes=100_000)
    assert result.returncode == 2, result.stderr
    assert "disk full while writing" in result.stderr and "Traceback" not in result.stderr
    assert (run / "last.pt").read_bytes() == before
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_full_disk_while_predicting_keeps_the_previous_submission(trained_run, tmp_path):
    out = tmp_path / "pred"
    assert facenext("predict", trained_run, "--out", out).returncode == 0
    before = (out / "submission.csv").read_bytes()
    result = cli_process(["predict", str(trained_run), "--out", str(out), "--tta", "none"], limit_bytes=200)
    assert result.returncode == 2 and "disk full" in result.stderr, result.stderr
    assert (out / "submission.csv").read_bytes() == before


def test_kaggle_credentials_never_reach_run_folders_or_logs(sample, tmp_path, monkeypatch):
    secret = "k3y-that-must-not-leak-0123456789"
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", secret)
    run = tmp_path / "run"
    result = facenext(*train_args(sample, run, "train.epochs=1"))
    assert result.returncode == 0
    assert secret not in result.stdout + result.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# --- bad inputs: one line naming the problem, exit status 2, no traceback, nothing lost -----------------------


def assert_user_error(result, *words):
    conftest.assert_user_error(result, *words, allow_warnings=True)


def copy_competition(sample, tmp_path):
    import shutil

    copy = tmp_path / "competition"
    shutil.copytree(sample, copy)
    return copy, next(copy.glob("*-classification"))


def test_an_empty_test_folder(trained_run, sample, tmp_path):
    data, cls = copy_competition(sample, tmp_path)
    for image in (cls / "test").iterdir():
        image.unlink()
    result = facenext("predict", trained_run, "--data", data, "--out", tmp_path / "out")
    assert_user_error(result, "test")
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_dev_identities_that_are_not_in_train(sample, tmp_path):
    data, cls = copy_competition(sample, tmp_path)
    stranger = next((cls / "dev").iterdir())
    stranger.rename(stranger.with_name("n099999"))
    assert_user_error(facenext(*train_args(data, tmp_path / "run", "train.epochs=1")), "n099999")


def test_a_checkpoint_of_another_architecture(trained_run, sample, tmp_path):
    other = tmp_path / "other"
    args = ["train", CONFIG, "--out", str(other), f"data.root={sample}", *TINY_TRAIN, "train.epochs=1"]
    assert facenext(*args, "model.name=lean_nano").returncode == 0
    swapped = run_with_weights(trained_run, trained_run.parent / "swapped", (other / "best.pt").read_bytes())
    assert_user_error(facenext("predict", swapped, "--out", tmp_path / "out"), "architecture")


def test_a_huge_image_just_works(sample, tmp_path):
    from PIL import Image

    data, cls = copy_competition(sample, tmp_path)
    folder = next((cls / "train").iterdir())
    Image.new("RGB", (6000, 6000), (120, 90, 80)).save(folder / "huge.jpg", quality=80)
    result = facenext(*train_args(data, tmp_path / "run", "train.epochs=1"))
    assert result.returncode == 0, result.stderr


def test_a_zero_byte_and_a_fake_jpeg_among_the_test_images(trained_run, sample, tmp_path):
    data, cls = copy_competition(sample, tmp_path)
    (cls / "test" / "000001.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert_user_error(facenext("predict", trained_run, "--data", data, "--out", out), "000001.jpg")
    assert not (out / "submission.csv").exists()
