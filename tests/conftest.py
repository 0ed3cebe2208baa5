"""Shared fixtures and helpers: tiny real competitions, real trained runs built once per test session, and the two
ways of running the CLI (in this process, or as a separate process where the process itself is under test)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from facenext.cli import main
from facenext.config import config_from_dict
from facenext.console import log_to_console
from facenext.data.layout import find_layout, list_classes
from facenext.data.sample import write_sample_competition
from facenext.run import RunDir
from facenext.submission import classification_ids

from .fake_kaggle import FakeKaggle

# `make test` runs two pytest workers on two cores (pytest-xdist): each, and every process it starts, gets one
# thread, so that the workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.yaml")


def needs_shared(folder: Path, what: str) -> pytest.MarkDecorator:
    """Skip unless ``folder`` of ../shared (beside the repository) is there: a clone on its own has none."""
    return pytest.mark.skipif(
        not folder.is_dir(), reason=f"needs {what} at {folder} (a ../shared folder beside the clone); not present"
    )


ORL = ROOT.parent / "shared" / "data" / "orl_faces"
needs_orl = needs_shared(ORL, "the ORL faces")
CELEBA = ROOT.parent / "shared" / "data" / "celeba_faces"
needs_celeba = needs_shared(CELEBA, "the celeba faces")

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


@pytest.fixture(scope="session", autouse=True)
def _library_lines_on_the_console():
    """What the CLI does first: tests that call library functions directly see their lines as a user of the CLI."""
    log_to_console()


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


# ---------------------------------------------------------------------------------------------------------------
# Literal S25-to-F26 layouts (shared/spec/competitions.md), fake runs and their outputs, processes, small numbers
# ---------------------------------------------------------------------------------------------------------------

# The spec's lines, as the F26 download holds them.
TRAIN_LABELS = "train_000000.jpg 4521\ntrain_000001.jpg 4521\ntrain_000002.jpg 17\ntrain_000003.jpg 0\n"
DEV_LABELS = "dev_000000.jpg 17\ndev_000001.jpg 4521\n"
VER_IMAGES = ["q6HIqRrx.jpg", "wxMgJZO4.jpg", "Zk3mQ0aB.jpg", "p9LtY2cE.jpg"]
VAL_PAIRS = "q6HIqRrx.jpg wxMgJZO4.jpg 1\nZk3mQ0aB.jpg p9LtY2cE.jpg 0\nq6HIqRrx.jpg p9LtY2cE.jpg 0\n"
TEST_PAIRS = "q6HIqRrx.jpg wxMgJZO4.jpg\nZk3mQ0aB.jpg q6HIqRrx.jpg\n"
TEST_IMAGES = ["test_000000.jpg", "test_000001.jpg", "test_000002.jpg"]


def jpeg(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 100, 200 - shade)).save(path, format="JPEG")


def current_layout(folder: Path, pairs_under_cls: bool = False, test_labels: str | None = None) -> Path:
    """An S25-to-F26 competition folder built from the spec's literal lines."""
    cls = folder / "cls_data"
    for split, labels in (("train", TRAIN_LABELS), ("dev", DEV_LABELS)):
        (cls / split).mkdir(parents=True)
        (cls / split / "labels.txt").write_text(labels)
        for k, line in enumerate(labels.splitlines()):
            jpeg(cls / split / "images" / line.split()[0], 20 * k)
    for k, name in enumerate(TEST_IMAGES):
        jpeg(cls / "test" / "images" / name, 30 * k)
    if test_labels is not None:
        (cls / "test" / "labels.txt").write_text(test_labels)
    for k, name in enumerate(VER_IMAGES):
        jpeg(folder / "ver_data" / name, 40 * k)
    pairs = cls if pairs_under_cls else folder
    (pairs / "val_pairs.txt").write_text(VAL_PAIRS)
    (pairs / "test_pairs.txt").write_text(TEST_PAIRS)
    return folder


def download(data: Path, slug: str, folder: str, **kw) -> Path:
    """As `facenext download SLUG` leaves it: data/<slug>/<the zip's folder>/..., and the marker naming the slug."""
    current_layout(data / slug / folder, **kw)
    (data / slug / ".complete").write_text(json.dumps({"slug": slug, "files": 0, "zip_bytes": 0}))
    return data / slug / folder


def fake_run(runs: Path, name: str, parameters: int, data: Path, wandb: str | None = None) -> Path:
    """A run folder as training leaves it (config, classes, summary), without its weights."""
    run = runs / name
    folder = RunDir(run)
    folder.write_config(config_from_dict({"data": {"root": str(data), "term": "f26"}}))
    folder.write_classes(list_classes(find_layout(data, "f26").train))
    folder.write_summary({"parameters": parameters, "best_dev_acc": 0.5})
    if wandb:
        (run / "wandb.json").write_text(json.dumps({"path": wandb}))
    return run


def fake_outputs(
    predictions: Path, run: Path, data: Path, quality: float, seed: int, scoring: str = "plain cosine"
) -> None:
    """The files `predict --split dev`, `predict` and `verify` save: logits and pair scores, better with quality."""
    from facenext.combined import save_pair_scores
    from facenext.data.datasets import image_folder
    from facenext.predict import save_logits

    rng = np.random.default_rng(seed)
    layout = find_layout(data, "f26")
    classes = json.loads((run / "classes.json").read_text())
    out = predictions / run.name
    _, dev_labels = image_folder(layout.dev, classes)
    dev_labels = np.array(dev_labels)
    logits = rng.normal(size=(len(dev_labels), len(classes)))
    logits[np.arange(len(dev_labels)), dev_labels] += 6 * quality
    save_logits(out / "dev_logits.npz", logits, [str(i) for i in range(len(dev_labels))], classes, dev_labels)
    ids, _ = classification_ids(layout)
    weights = f"best:{run.name}"  # both parts from the same (absent) weights
    save_logits(out / "test_logits.npz", rng.normal(size=(len(ids), len(classes))), ids, classes, None, weights)
    val = pd.read_csv(layout.val_pairs, sep=" ", header=None)[2].to_numpy()
    scores = val * quality + rng.normal(scale=0.3, size=len(val))
    test_pairs = len(layout.test_pairs.read_text().splitlines())
    save_pair_scores(out, scores, val, rng.normal(size=test_pairs), scoring, weights)


def run(env, *args, cwd=None):
    """A separate process: the kaggle client reads its credentials, proxy and home from the environment it starts in."""
    return facenext_process(*args, env=env, cwd=cwd, timeout=120)


def make_run(runs: Path, name: str, data: Path, term: str, parameters: int | None) -> Path:
    """A run folder as training leaves it (config, classes; summary.json unless ``parameters`` is None: a run
    stopped before its summary), with a tiny model in its config."""
    folder = RunDir(runs / name)
    model = dict(item.removeprefix("model.").split("=") for item in TINY_MODEL)
    model["dims"], model["depths"] = json.loads(model["dims"]), json.loads(model["depths"])
    folder.write_config(config_from_dict({"data": {"root": str(data), "term": term}, "model": model}))
    folder.write_classes(list_classes(find_layout(data, term).train))
    if parameters is not None:
        folder.write_summary({"parameters": parameters, "best_dev_acc": 0.5})
    return folder.path


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noisy_clusters(people: int, images: int, noise: float, seed: int = 0):
    """Normalised embeddings: ``images`` noisy views of each of ``people`` random directions, and their owners."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, 32))
    owners = np.repeat(np.arange(people), images)
    feats = centres[owners] + noise * rng.normal(size=(len(owners), 32))
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), owners


# S26 shipped cls_data/test/labels.txt ("<image_file> <class_id>"), F26 none.
S26_TEST_LABELS = "test_000000.jpg 4521\ntest_000001.jpg 17\ntest_000002.jpg 0\n"


def unzipped(parent: Path, term: str, test_split: bool = True) -> Path:
    """``parent/hw2p2_data/`` as the term's zip unpacks, without any marker; optionally without a test split."""
    folder = current_layout(parent / "hw2p2_data", test_labels=S26_TEST_LABELS if term == "s26" else None)
    if not test_split:
        shutil.rmtree(folder / "cls_data" / "test")
    return folder


STEMS_SAMPLE = "id,label\ntest_000000,0\ntest_000001,0\ntest_000002,0\n1,0.0\n2,0.0\n"  # stems; pairs 1..N
