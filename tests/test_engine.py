"""The training engine, for real: kill and resume, stops, non-finite losses, EMA, mixup, averaging, DDP."""

import importlib.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback

import pandas as pd
import pytest
import torch

from facenext.checkpoint import load_checkpoint
from facenext.cli import main

from .conftest import assert_same_tensors, assert_user_error, facenext, free_port, train_args

# A LayerNorm model without stochastic parts: per-sample computations, so batches can be split exactly.
LN_MODEL = ["model.name=tiny", "model.dims=[8,16,24,32]", "model.depths=[1,1,1,1]", "model.drop_path_rate=0.0"]


def weights(path):
    state = load_checkpoint(path)
    return state["model"], state.get("ema")


def start(args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "facenext", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def wait_for(condition, process, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.05)


def test_killed_and_stopped_runs_resume_to_the_same_weights(sample, tmp_path):
    # Drop path, mixup and EMA draw on torch's and numpy's generators; a recovery file is written at every step.
    extra = [
        "train.epochs=3", "train.deterministic=true", "train.recovery_minutes=0.00001", "train.ema=true",
        "train.ema_decay=0.9", "train.mixup=0.2", "model.drop_path_rate=0.2",
    ]  # fmt: skip
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert subprocess.run([sys.executable, "-m", "facenext", *train_args(sample, reference, *extra)]).returncode == 0

    args = train_args(sample, interrupted, *extra)
    first = start(args)
    wait_for(lambda: (interrupted / "recovery.pt").exists(), first)
    first.send_signal(signal.SIGKILL)  # in the middle of epoch 1
    first.wait()
    assert not (interrupted / "last.pt").exists()

    second = start(args)
    wait_for(lambda: (interrupted / "last.pt").exists() and (interrupted / "recovery.pt").exists(), second)
    second.send_signal(signal.SIGTERM)  # a clean stop, inside epoch 2
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0 and "stopped (SIGTERM)" in output and "resuming" in output

    third = start(args)
    output, _ = third.communicate(timeout=300)
    assert third.returncode == 0, output
    model, ema = weights(interrupted / "last.pt")
    ref_model, ref_ema = weights(reference / "last.pt")
    assert_same_tensors(model, ref_model)
    assert_same_tensors(ema, ref_ema)
    metrics = pd.read_csv(interrupted / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert metrics["ema_dev_acc"].notna().all()
    assert not (interrupted / "recovery.pt").exists()


def test_time_limit_stops_with_a_checkpoint(sample, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(sample, run, "train.epochs=2", "train.time_limit=0.0000001")) == 0
    assert "stopped (time limit)" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "time limit" and not summary["complete"]
    assert load_checkpoint(run / "recovery.pt")["step"] == 1


def test_deterministic_training_sets_cublas_workspace_config_or_refuses_a_value_that_undoes_it(
    sample, tmp_path, monkeypatch
):
    # CUDA's matrix products are deterministic only with this set before cuBLAS starts; torch itself only warns.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    refused = facenext(*train_args(sample, tmp_path / "refused", "train.deterministic=true"))
    assert_user_error(refused, "CUBLAS_WORKSPACE_CONFIG=:4096:8", "':0:0'", "unset it")
    assert not (tmp_path / "refused").exists()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    args = train_args(sample, tmp_path / "run", "train.deterministic=true", "train.time_limit=0.0000001")
    assert facenext(*args).returncode == 0  # one step, then the time limit
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_non_finite_losses_stop_the_run_and_nothing_is_saved_as_best(sample, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(train_args(sample, run, "train.lr=1e30", "train.warmup_epochs=0", "train.max_bad_steps=3"))
    assert code == 2
    assert "3 non-finite losses in a row" in capsys.readouterr().err
    assert not (run / "best.pt").exists()


def test_top_k_checkpoints_average_into_a_usable_model(sample, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(sample, run, "train.epochs=4", "train.keep_top_k=2", "train.ema=true")) == 0
    kept = sorted((run / "top").glob("epoch_*.pt"))
    assert len(kept) == 2
    assert main(["average", str(run)]) == 0
    averaged = load_checkpoint(run / "averaged.pt")["model"]
    parts = [load_checkpoint(p)["model"] for p in kept]
    name = "head.fc.weight"
    assert torch.allclose(averaged[name], (parts[0][name] + parts[1][name]) / 2)
    for which in ("averaged", "ema"):
        out = tmp_path / which
        assert main(["predict", str(run), "--weights", which, "--split", "dev", "--out", str(out)]) == 0
        assert json.loads((out / "predict_dev.json").read_text())["dev_acc"] > 0.125
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_gradient_accumulation_equals_the_larger_batch(sample, tmp_path):
    common = [*LN_MODEL, "train.epochs=1", "train.deterministic=true", "train.keep_top_k=0"]
    assert main(train_args(sample, tmp_path / "big", *common, "train.batch_size=16")) == 0
    assert main(train_args(sample, tmp_path / "accum", *common, "train.batch_size=8", "train.accum_steps=2")) == 0
    big, accum = weights(tmp_path / "big" / "last.pt")[0], weights(tmp_path / "accum" / "last.pt")[0]
    assert all(torch.allclose(big[k], accum[k], atol=1e-5) for k in big)
    assert (
        load_checkpoint(tmp_path / "accum" / "last.pt")["step"] == load_checkpoint(tmp_path / "big" / "last.pt")["step"]
    )


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(sample, tmp_path, capsys):
    common = [*LN_MODEL, "train.epochs=2", "train.batch_size=16", "train.keep_top_k=0", "train.plot=false"]
    assert main(train_args(sample, tmp_path / "single", *common)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    result = subprocess.run(
        [*launch, "-m", "facenext", *train_args(sample, tmp_path / "ddp", *common)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    single = pd.read_csv(tmp_path / "single" / "metrics.csv")
    ddp = pd.read_csv(tmp_path / "ddp" / "metrics.csv")
    assert ddp["train_loss"].tolist() == pytest.approx(single["train_loss"].tolist(), rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["processes"] == 2
    # Each process keeps its own generators (seeded with seed + rank, so drop-path masks differ between them) ...
    rng = load_checkpoint(tmp_path / "ddp" / "last.pt")["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    # ... and a run from two GPUs continues on one, saying so.
    assert main(train_args(sample, tmp_path / "ddp", *common, "train.epochs=3")) == 0
    assert "processes 2 -> 1" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "ddp" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def start_rank(rank, world, port, args, log):
    """A training process as torchrun starts one (its environment, a session of its own), forked from this one so
    that it skips the seconds of imports a fresh interpreter takes; what it prints goes to ``log``."""

    def run():
        os.setsid()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world))
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        with open(log, "w", buffering=1) as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out
            try:
                code = main(args)
            except BaseException:
                traceback.print_exc()
                code = 1
            out.flush()
            os._exit(code)  # nothing of this test process's own exit

    import facenext.engine.train  # noqa: F401  (imported once here rather than in each process)

    process = multiprocessing.get_context("fork").Process(target=run)
    process.start()
    return process


def test_sigterm_to_one_of_two_processes_stops_both_with_a_recovery_file_and_one_decodes_the_cache(sample, tmp_path):
    # torchrun signals a process's whole group, so the DataLoader worker gets the SIGTERM too. The other process is
    # not signalled: it learns of the stop only from the per-step agreement (never at a log line: log_every=1000).
    run, cache = tmp_path / "ddp", tmp_path / "cache"
    extra = [
        *LN_MODEL, "train.epochs=40", "train.log_every=1000", "train.plot=false", "train.keep_top_k=0",
        "data.num_workers=1", "data.cache=true", f"data.cache_dir={cache}",
    ]  # fmt: skip
    port, logs = free_port(), [tmp_path / "rank0.log", tmp_path / "rank1.log"]
    ranks = [start_rank(rank, 2, port, train_args(sample, run, *extra), logs[rank]) for rank in range(2)]
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists():  # epoch 1 is over; 39 remain
        assert ranks[0].is_alive() and time.monotonic() < deadline, logs[0].read_text()
        time.sleep(0.05)
    os.killpg(ranks[1].pid, signal.SIGTERM)
    for rank in ranks:
        rank.join(timeout=120)
    output = "".join(log.read_text() for log in logs)
    assert [rank.exitcode for rank in ranks] == [0, 0] and "Traceback" not in output, output
    assert "stopped (SIGTERM)" in output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and summary["epochs"] < 40
    recovery = load_checkpoint(run / "recovery.pt")
    assert recovery["epoch"] == summary["epochs"] and recovery["step"] > 0
    # One process decoded each split (train and dev) while the other waited, then mapped its files.
    assert output.count("images into the cache") == 2, output
    assert len(list(cache.glob("*.npy"))) == 2


def test_asking_for_a_tracker_that_is_not_installed_is_a_user_error(sample, tmp_path, capsys):
    if importlib.util.find_spec("tensorboard") is None:
        assert main(train_args(sample, tmp_path / "run", "train.epochs=1", "train.log_to=[tensorboard]")) == 2
        assert "pip install tensorboard" in capsys.readouterr().err
    assert main(train_args(sample, tmp_path / "run2", "train.epochs=1", "train.log_to=[mlflow]")) == 2
    assert "unknown logger 'mlflow'" in capsys.readouterr().err


def test_a_run_that_is_not_learning_says_so_at_epoch_5(sample, trained_run, tmp_path, caplog):
    """A learning rate too small to move the weights leaves training accuracy at chance (1/8 here): the run warns
    at epoch 5 instead of spending its whole budget silently; the learning fixture's run does not."""
    run = tmp_path / "stalled"
    with caplog.at_level("WARNING", logger="facenext"):
        assert main(train_args(sample, run, "train.epochs=5", "train.lr=1e-9", "train.min_lr=1e-10")) == 0
    warnings = [r.getMessage() for r in caplog.records if "not learning" in r.getMessage()]
    stalled = pd.read_csv(run / "metrics.csv")["train_acc"].iloc[4]
    assert stalled <= 0.25 and len(warnings) == 1
    assert f"training accuracy {stalled:.3f} after 5 epochs is chance for 8 classes" in warnings[0]
    assert pd.read_csv(trained_run / "metrics.csv")["train_acc"].iloc[4] > 0.25  # so the fixture's run was not warned
