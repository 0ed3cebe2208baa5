"""Shared fixtures and helpers: tiny real competitions, real trained runs built once per test session, and the two
ways of running the CLI (in this process, or as a separate process where the process itself is under test)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from facenext.cli import main
from facenext.data.sample import write_sample_competition

from .fake_kaggle import FakeKaggle

# `make test` runs two pytest workers on two cores (pytest-xdist): each, and every process it starts, gets one
# thread, so that the workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.yaml")
# The ORL faces come from ../shared beside the repository; a clone on its own has none, so those tests skip.
ORL = ROOT.parent / "shared" / "data" / "orl_faces"
needs_orl = pytest.mark.skipif(
    not ORL.is_dir(), reason=f"needs the ORL faces at {ORL} (a ../shared folder beside the clone); not present"
)

# A small lean ConvNeXt at 48 px: a few seconds an epoch on two CPU cores.
TINY_MODEL = ["model.name=lean_nano", "model.dims=[16,32,48,64]", "model.depths=[1,1,1,1]"]
TINY_TRAIN = ["data.image_size=48", "data.num_workers=0", "train.batch_size=16", "train.lr=3e-3", "train.seed=0"]


def train_args(data, run, *extra) -> list[str]:
    """`facenext train` of the tiny model on the competition at ``data`` into ``run``."""
    return ["train", CONFIG, "--out", str(run), f"data.root={data}", *TINY_MODEL, *TINY_TRAIN, *extra]


def data_root(run: Path) -> str:
    """The competition folder a run was trained on, as its resolved config records it."""
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]


def run_with_weights(trained: Path, run: Path, weights: bytes) -> Path:
    """A run folder at ``run`` with ``trained``'s config and classes and ``weights`` as its best.pt."""
    run.mkdir()
    for name in ("config.yaml", "classes.json"):
        (run / name).write_bytes((trained / name).read_bytes())
    (run / "best.pt").write_bytes(weights)
    return run


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def facenext(*args) -> Result:
    """The CLI in this process (``facenext.cli.main``), its exit status and what it printed.

    An exception that escapes ``main`` fails the test, as a traceback from the console script would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
    return Result(code, out.getvalue(), err.getvalue())


def facenext_process(*args, env=None, cwd=None, timeout=300, preexec_fn=None) -> subprocess.CompletedProcess:
    """The CLI as a separate process: for signals, kills, resource limits, and the environment a process starts with."""
    return subprocess.run(
        [sys.executable, "-m", "facenext", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        preexec_fn=preexec_fn,
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


@pytest.fixture(autouse=True)
def _keep_torch_determinism():
    """`train.deterministic=true` switches torch to deterministic algorithms for the process; undo it per test."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> Path:
    """An F23-layout synthetic competition: 8 identities, 20 images each, 64 px."""
    out = tmp_path_factory.mktemp("data") / "sample"
    write_sample_competition(out, "f23", identities=8, images_per_identity=20, size=64, seed=1)
    return out


@pytest.fixture(scope="session")
def sample_f24(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "sample_f24"
    write_sample_competition(out, "f24", identities=8, images_per_identity=10, size=64, seed=2)
    return out


@pytest.fixture(scope="session")
def trained_run(sample, tmp_path_factory) -> Path:
    """A real run trained for 20 epochs on the sample competition."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(train_args(sample, run, "train.epochs=20")) == 0
    return run


@pytest.fixture(scope="session")
def f24_run(sample_f24, tmp_path_factory) -> Path:
    """A real run trained for 6 epochs on the F24 (pairs) sample competition."""
    run = tmp_path_factory.mktemp("runs") / "f24"
    assert main(train_args(sample_f24, run, "train.epochs=6")) == 0
    return run


@pytest.fixture(scope="module")
def server():
    """A fake Kaggle API on 127.0.0.1 that the real ``kaggle`` client talks to (see fake_kaggle.py)."""
    fake = FakeKaggle()
    yield fake
    fake.close()


@pytest.fixture
def fake(server):
    server.reset()
    return server
