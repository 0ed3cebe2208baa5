"""The run folder object, read from a real trained run; prediction loads models without the training engine."""

import shutil
import subprocess
import sys

import pytest
import torch

from facenext.checkpoint import load_checkpoint, save_checkpoint
from facenext.data.datasets import image_folder
from facenext.data.layout import find_layout, list_classes
from facenext.engine.average import average_checkpoints
from facenext.errors import UserError
from facenext.run import RunDir, data_fingerprint, load_run_config

from .conftest import ROOT


def test_a_trained_run_reads_back_what_training_wrote(trained_run, sample):
    run = RunDir(trained_run)
    assert run.is_run() and run.name == "tiny"
    config, classes = load_run_config(trained_run)
    assert config == run.config() and classes == run.classes()
    assert config.model.name == "lean_nano" and config.data.image_size == 48 and config.train.epochs == 20
    layout = find_layout(sample, "auto")
    assert classes == list_classes(layout.train)
    train_images = len(image_folder(layout.train, classes)[0])
    assert run.fingerprint() == data_fingerprint(classes, train_images)
    assert run.fingerprint()["classes"] == 8 and train_images > 0
    summary = run.summary()
    assert summary["epochs"] == 20 and summary["complete"] is True
    assert run.best_dev_acc() == summary["best_dev_acc"] and run.label() == f"tiny (dev {summary['best_dev_acc']:.4f})"
    assert run.metrics_file.read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,dev_loss,dev_acc")
    assert len(run.top_files()) == config.train.keep_top_k


def test_the_fingerprint_tells_other_data_apart():
    a = data_fingerprint(["n1", "n2"], 40)
    assert a == data_fingerprint(["n1", "n2"], 40)
    assert a != data_fingerprint(["n2", "n1"], 40) and a != data_fingerprint(["n1", "n2"], 41)


def test_weights_by_name(trained_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    run = RunDir(copy)
    assert {w: run.weights_file(w).name for w in ("best", "last", "ema", "averaged")} == {
        "best": "best.pt", "last": "last.pt", "ema": "last.pt", "averaged": "averaged.pt"
    }  # fmt: skip
    with pytest.raises(UserError, match="unknown weights 'newest'"):
        run.weights_file("newest")
    with pytest.raises(UserError, match="trained without EMA"):
        run.load_weights("ema")
    with pytest.raises(UserError, match=r"averaged\.pt not found"):
        run.load_weights("averaged")

    last = load_checkpoint(copy / "last.pt")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in last["model"].items()}
    save_checkpoint(copy / "last.pt", {**last, "ema": ema})
    model = run.load_model("ema")
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 8)

    average_checkpoints(copy)
    averaged = run.load_weights("averaged")["model"]
    tops = [load_checkpoint(p)["model"] for p in run.top_files()]
    key = next(k for k, v in averaged.items() if v.is_floating_point())
    assert torch.allclose(averaged[key], torch.stack([t[key] for t in tops]).mean(0))
    assert run.load_weights("best")["model"].keys() == averaged.keys()


def test_a_folder_that_is_not_a_run(trained_run, tmp_path):
    with pytest.raises(UserError, match="is not a training run"):
        RunDir(tmp_path).config()
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.yaml", "classes.json"):
        shutil.copy(trained_run / name, old / name)
    assert RunDir(old).fingerprint() is None and RunDir(old).summary() is None  # a run from before data.json
    assert RunDir(old).label() == "old"
    (old / "classes.json").write_text("[1, 2")
    with pytest.raises(UserError, match=r"classes\.json is not readable JSON"):
        RunDir(old).classes()


def test_prediction_does_not_import_the_training_engine():
    code = (
        "import sys, facenext.inference, facenext.predict\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['facenext', 'engine']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
