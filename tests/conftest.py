"""Shared fixtures: tiny real competitions and one real trained run, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from facenext.cli import main
from facenext.data.sample import write_sample_competition

from .fake_kaggle import FakeKaggle

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT.parent / "shared" / "data" / "orl_faces"

# A small lean ConvNeXt at 48 px: a few seconds an epoch on two CPU cores.
TINY_MODEL = ["model.name=lean_nano", "model.dims=[16,32,48,64]", "model.depths=[1,1,1,1]"]
TINY_TRAIN = ["data.image_size=48", "data.num_workers=0", "train.batch_size=16", "train.lr=3e-3", "train.seed=0"]


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
    config = str(ROOT / "configs" / "demo.yaml")
    code = main(
        ["train", config, "--out", str(run), f"data.root={sample}", "train.epochs=20", *TINY_MODEL, *TINY_TRAIN]
    )
    assert code == 0
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
