"""Resumes that carry across machines: operational settings that change, an optimizer state from a non-fused AdamW,
a position past the end of an epoch, the augmentation device a run chose, and checkpoints from before the dev score
was named for what it holds."""

import shutil

import pytest
import torch
import yaml
from torch.utils.data import BatchSampler

from facenext.checkpoint import load_checkpoint, save_checkpoint
from facenext.cli import main
from facenext.config import load_config
from facenext.data.datasets import SeededSampler
from facenext.data.device_augment import DeviceAugmentImages
from facenext.engine.average import average_checkpoints
from facenext.engine.loaders import load_data
from facenext.engine.run_state import epoch_score
from facenext.engine.train import Trainer, parameter_groups
from facenext.errors import UserError
from facenext.run import RunDir

from .conftest import CONFIG, assert_user_error, facenext, train_args


def overrides(data, *extra):
    """``train_args``'s overrides, for building a Trainer in this process."""
    return train_args(data, "unused", *extra)[4:]


def copy_of(run, tmp_path):
    """A copy of a session's trained run (conftest's ``trained_run``, 20 epochs), to resume for a 21st."""
    return shutil.copytree(run, tmp_path / "run")


def test_operational_settings_change_on_resume_and_settings_that_change_the_result_are_refused(
    trained_run, sample, tmp_path, capsys
):
    run = copy_of(trained_run, tmp_path)
    moved = shutil.copytree(sample, tmp_path / "other_machine" / "sample")  # the data, mounted elsewhere
    # A T4 x2 notebook's run continued in a one-GPU session: fewer workers, another device, another time limit.
    operational = [
        "data.num_workers=2", "train.device=cpu", "train.time_limit=5", "train.log_every=7",
        "train.recovery_minutes=3", "train.epochs=21",
    ]  # fmt: skip
    trainer = Trainer(load_config(CONFIG, overrides(moved, *operational)), run)
    assert trainer.resume() and trainer.epoch == 20
    out = capsys.readouterr().out
    for change in [
        f"data.root {sample} -> {moved}", "data.num_workers 0 -> 2", "train.device auto -> cpu",
        "train.time_limit None -> 5.0", "train.log_every 0 -> 7", "train.recovery_minutes 20.0 -> 3.0",
        "train.epochs 20 -> 21",
    ]:  # fmt: skip
        assert change in out, out

    # What changes the result is refused, every such setting named; operational ones beside them do not count.
    result = facenext(*train_args(sample, run, "train.lr=0.01", "model.drop_path_rate=0.3", "data.num_workers=2"))
    assert_user_error(result, "different config (model.drop_path_rate, train.lr):", "--out")


def test_a_run_trained_with_the_non_fused_adamw_resumes_with_the_fused_one(trained_run, sample, tmp_path):
    run = copy_of(trained_run, tmp_path)
    saved = load_checkpoint(run / "last.pt")
    # What a session on MPS, or on a torch without the fused AdamW, writes: the non-fused AdamW's own state.
    config, model = RunDir(run).config(), RunDir(run).load_model("last").train()
    non_fused = torch.optim.AdamW(parameter_groups(model, config.train.weight_decay), lr=1e-3, fused=False)
    model(torch.rand(2, 3, 48, 48)).logsumexp(1).mean().backward()
    non_fused.step()
    assert non_fused.state_dict()["param_groups"][0]["fused"] is False
    save_checkpoint(run / "last.pt", {**saved, "optimizer": non_fused.state_dict()})

    # One step (a time limit already passed stops after it), taken by the fused AdamW through the GradScaler.
    result = facenext(*train_args(sample, run, "train.epochs=21", "train.time_limit=1e-9"))
    assert result.returncode == 0, result.stderr  # not AdamW's "Expected grad_scale and found_inf to be None"
    resumed = load_checkpoint(run / "recovery.pt")
    optimizer = resumed["optimizer"]
    assert resumed["step"] == saved["step"] + 1 and optimizer["param_groups"][0]["fused"] is True
    # The moments went on from the saved ones: one step there, one here.
    assert {float(s["step"]) for s in optimizer["state"].values()} == {2.0}


def test_a_stop_on_the_last_batch_of_an_epoch_smaller_than_a_batch_resumes(sample, tmp_path):
    # The sample's train split is smaller than one batch of 256: one batch an epoch, none dropped. A time limit
    # already passed stops after that batch, and the next run resumes past the end of the epoch's samples.
    run = tmp_path / "run"
    args = train_args(sample, run, "train.epochs=1", "train.batch_size=256", "train.time_limit=1e-9")
    args.append("train.plot=false")
    assert main(args) == 0
    assert load_checkpoint(run / "recovery.pt")["batch"] == 1
    result = facenext(*args)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "the end of epoch 1" in result.stdout
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_position_from_more_processes_may_pass_the_end_of_a_shard():
    # 31 images, a global batch of 16. Two processes (8 each) pad their shards to 16 images: 2 batches an epoch. One
    # process has 1 (its last 15 images dropped). Stopped by two after their last batch, resumed by one:
    assert len(BatchSampler(SeededSampler(31, 0, True, 0, 2), 8, drop_last=True)) == 2
    sampler = SeededSampler(31, 0)
    sampler.set_epoch(0, skip=2 * 16)
    assert len(sampler) == 0 and list(sampler) == []
    assert len(BatchSampler(sampler, 16, drop_last=True)) == 0


def test_the_augmentation_device_is_recorded_and_auto_keeps_it_on_resume(trained_run, sample, tmp_path, capsys):
    # A run records where it augments: here (a CPU) auto chooses the workers.
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["augment_device"] == "cpu"
    assert load_checkpoint(trained_run / "last.pt")["config"]["data"]["augment_device"] == "cpu"
    # On a CUDA card where augmenting costs the workers much, auto records gpu, as here.
    run = copy_of(trained_run, tmp_path)
    saved = load_checkpoint(run / "last.pt")
    on_gpu = {**saved["config"], "data": {**saved["config"]["data"], "augment_device": "gpu"}}
    save_checkpoint(run / "last.pt", {**saved, "config": on_gpu})
    capsys.readouterr()

    # Resumed with auto where auto alone would choose the workers: the run goes on as it started.
    trainer = Trainer(load_config(CONFIG, overrides(sample, "train.epochs=21")), run)
    assert isinstance(trainer.data.train, DeviceAugmentImages) and trainer.config.data.augment_device == "gpu"
    assert "data.augment_device=auto: gpu, as this run chose when it started" in capsys.readouterr().out
    assert trainer.resume()
    # Asking for the other device explicitly changes the augmentation: refused.
    with pytest.raises(UserError, match=r"different config \(data.augment_device\)"):
        Trainer(load_config(CONFIG, overrides(sample, "data.augment_device=cpu")), run).resume()
    # Under torchrun every process takes process 0's choice: ``agree`` gives it, whatever this process chose.
    agreed = load_data(load_config(CONFIG, overrides(sample)), torch.device("cpu"), agree=lambda where: "gpu")
    assert agreed.augment_device == "gpu" and isinstance(agreed.train, DeviceAugmentImages)


def test_a_run_written_with_the_old_score_names_resumes_and_averages(trained_run, sample, tmp_path):
    run = copy_of(trained_run, tmp_path)
    saved = load_checkpoint(run / "last.pt")
    tops = {path: load_checkpoint(path) for path in RunDir(run).top_files()}
    assert "best_acc" not in saved and all("dev_acc" not in top for top in tops.values())
    # What FaceNext wrote before: the best dev score as "best_acc", each top-k epoch's as "dev_acc".
    save_checkpoint(run / "last.pt", {("best_acc" if k == "best_score" else k): v for k, v in saved.items()})
    for path, top in tops.items():
        save_checkpoint(path, {("dev_acc" if k == "dev_score" else k): v for k, v in top.items()})

    scores = sorted((score for score, _, _ in saved["top"]), reverse=True)
    assert average_checkpoints(run)["dev_scores"] == scores and len(scores) == 3
    trainer = Trainer(load_config(CONFIG, overrides(sample, "train.epochs=21")), run)
    assert trainer.resume() and trainer.run_state.best_score == saved["best_score"] > 0.125  # 8 identities
    summary = trainer.fit()  # a 21st epoch, ranked against the old scores
    resumed = load_checkpoint(run / "last.pt")
    assert resumed["best_score"] == summary["best_dev_score"] >= saved["best_score"] and "best_acc" not in resumed
    kept = {name: score for score, _, name in resumed["top"]}
    assert len(kept) == 3 and set(kept) == {p.name for p in RunDir(run).top_files()}
    assert all(epoch_score(load_checkpoint(RunDir(run).top_dir / n)) == s for n, s in kept.items())
