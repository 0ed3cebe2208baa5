"""Engine behaviour that only shows on GPUs, checked on the CPU: precision by card, resume from checkpoints loaded
to another device or written on other hardware, accumulation and skipped batches across resumes, schedules, EMA."""

import json

import pandas as pd
import pytest
import torch

from facenext.checkpoint import load_checkpoint, save_checkpoint
from facenext.cli import main
from facenext.config import load_config
from facenext.device import amp_dtype, describe_device
from facenext.engine.run_state import rng_state, set_rng_state
from facenext.engine.schedule import build_scheduler
from facenext.engine.train import Trainer
from facenext.losses import CosineClassifier

from .conftest import CONFIG, train_args

# (name, compute capability, expected autocast dtype): emulated bf16 on pre-Ampere cards must not count.
CARDS = [
    ("Tesla P100-PCIE-16GB", (6, 0), torch.float16),
    ("Tesla V100-SXM2-16GB", (7, 0), torch.float16),
    ("Tesla T4", (7, 5), torch.float16),
    ("NVIDIA A100-SXM4-40GB", (8, 0), torch.bfloat16),
    ("NVIDIA L4", (8, 9), torch.bfloat16),
    ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16),
]


def overrides(sample, *extra):
    """``train_args``'s overrides, for building a Trainer in this process."""
    return train_args(sample, "unused", *extra)[4:]


def fake_cards(monkeypatch, cards: dict[int, tuple[str, tuple[int, int]]]) -> list[torch.device]:
    """Fake torch's CUDA device queries: ``cards`` maps a device index to its name and compute capability."""
    asked = []

    def card(device=None):
        index = torch.device(device).index if device is not None else 0
        asked.append(index)
        return cards[index or 0]

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: card(device)[1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card(device)[0])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # torch counts emulated bf16 as supported on every recent card; the choice must not rely on it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return asked


@pytest.mark.parametrize(("name", "capability", "expected"), CARDS)
def test_precision_follows_the_card_capability(monkeypatch, name, capability, expected):
    fake_cards(monkeypatch, {0: (name, capability)})
    assert amp_dtype(torch.device("cuda:0"), enabled=True) is expected
    assert amp_dtype(torch.device("cuda:0"), enabled=False) is None
    major, minor = capability
    assert describe_device(torch.device("cuda:0")) == f"cuda:0 ({name}, compute {major}.{minor})"


def test_precision_is_decided_for_the_device_used_not_the_current_one(monkeypatch):
    asked = fake_cards(monkeypatch, {0: ("NVIDIA A100-SXM4-40GB", (8, 0)), 1: ("Tesla T4", (7, 5))})
    assert amp_dtype(torch.device("cuda:1"), enabled=True) is torch.float16
    assert asked == [1]
    assert amp_dtype(torch.device("cpu"), enabled=True) is None


def test_cosine_classifier_stays_fp32_under_autocast():
    torch.manual_seed(0)
    head = CosineClassifier(16, 5, scale=30.0)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x.bfloat16())
    assert logits.dtype == torch.float32
    # Nearly parallel to a class centre: fp32 resolves the cosine below 1, where bf16 (8 mantissa bits) rounds to 1.
    centre = head.weight.detach()[0].clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cosine = head((centre + 1e-4 * torch.randn_like(centre))[None]) / 30.0
    assert 0.999 < cosine[0, 0].item() < 1.0


def trained(sample, tmp_path, *extra) -> tuple:
    """A one-epoch run, and a Trainer for the same run that has not resumed yet."""
    run = tmp_path / "run"
    assert main(train_args(sample, run, "train.epochs=1", *extra)) == 0
    config = load_config(CONFIG, overrides(sample, "train.epochs=2", *extra))
    return run, Trainer(config, run)


def test_resume_loads_checkpoints_to_the_cpu_whatever_the_training_device(sample, tmp_path):
    run, trainer = trained(sample, tmp_path)
    # A meta device stands in for CUDA: a checkpoint loaded onto it would hand set_rng_state non-CPU tensors and
    # load_state_dict tensors without data.
    trainer.device = torch.device("meta")
    assert trainer.resume()
    saved = load_checkpoint(run / "last.pt")
    assert torch.equal(torch.get_rng_state(), saved["rng"][0]["torch"])
    assert all(torch.equal(v.cpu(), saved["model"][k]) for k, v in trainer.model.state_dict().items())


def test_a_run_resumes_where_another_precision_is_chosen(sample, tmp_path, capsys):
    run, trainer = trained(sample, tmp_path)
    saved = load_checkpoint(run / "last.pt")
    assert saved["scaler"]["scale"] == 1.0  # fp32 and bf16: the scaler only skips steps with non-finite gradients
    trainer.scaler = torch.amp.GradScaler("cpu")  # what an fp16 card gets
    trainer.environment = {**trainer.environment, "precision": "fp16"}
    assert trainer.resume()
    assert trainer.scaler.get_scale() == 65536.0  # a fresh scale, as a new fp16 run starts with, not the saved 1
    # fp32 on a CPU, bf16 on a recent GPU (this test also runs on a lent GPU machine, where auto picks CUDA)
    before = saved["environment"]["precision"]
    assert f"resuming with changes since the checkpoint: precision {before} -> fp16" in capsys.readouterr().out

    # A bf16 run written before 0.2: an empty scaler state and no environment record.
    save_checkpoint(run / "last.pt", {**saved, "scaler": {}, "environment": None})
    again = Trainer(load_config(CONFIG, overrides(sample, "train.epochs=2")), run)
    again.scaler = torch.amp.GradScaler("cpu")
    assert again.resume()
    assert again.scaler.get_scale() == 65536.0


def test_cuda_generator_states_from_more_gpus_are_restored_on_fewer(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    gpu0, gpu1 = torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)
    cpu = rng_state(torch.device("cpu"))
    state = {**cpu, "cuda": [gpu0, gpu1]}  # the format written before 0.2: every GPU's state, by index
    set_rng_state(state, torch.device("cuda:0"))
    set_rng_state(state, torch.device("cuda:3"))  # a GPU that the checkpoint has no state for
    set_rng_state({**cpu, "cuda": gpu1}, torch.device("cuda:0"))  # today's format: this process's GPU only
    set_rng_state({**cpu, "cuda": gpu1}, torch.device("cpu"))  # written on a GPU, resumed on a CPU
    assert [(torch.equal(s, gpu1), str(d)) for s, d in restored] == [(False, "cuda:0"), (True, "cuda:0")]


def resume_in_steps(args, run) -> int:
    """Run ``args`` (which stop after every optimizer step) until the run completes; the number of runs."""
    runs = 0
    while not (run / "summary.json").exists() or not json.loads((run / "summary.json").read_text())["complete"]:
        assert main(args) == 0
        runs += 1
        assert runs < 40
    return runs


def test_accumulation_steps_an_epochs_short_last_group_and_resumes_bit_exactly(sample, tmp_path):
    accum = ["train.accum_steps=4", "train.epochs=2", "train.deterministic=true", "model.drop_path_rate=0.2"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(train_args(sample, reference, *accum)) == 0
    batches = len(Trainer(load_config(CONFIG, overrides(sample, *accum)), tmp_path / "probe").train_loader)
    assert batches % 4, "the sample must leave a short last group"
    groups = -(-batches // 4)
    assert load_checkpoint(reference / "last.pt")["step"] == 2 * groups

    # A time limit already passed stops at the first optimizer step of every run: one group per run.
    # The last run of each epoch only evaluates it; one more run ends the training.
    args = train_args(sample, interrupted, *accum, "train.time_limit=1e-9")
    assert resume_in_steps(args, interrupted) == 2 * groups + 1
    ours, theirs = load_checkpoint(interrupted / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"]
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


def test_skipped_non_finite_batches_count_in_the_resume_position(sample, tmp_path):
    # With an absurd learning rate the first step blows the weights up and every later loss is non-finite.
    blow_up = ["train.lr=1e30", "train.warmup_epochs=0", "train.max_bad_steps=1000", "train.epochs=1"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert main(train_args(sample, reference, *blow_up)) == 0
    skipped = pd.read_csv(reference / "metrics.csv")["skipped_steps"].tolist()
    batches = skipped[0] + 1
    assert batches > 2
    # Each run stops after its first batch, skipped or not (and one more ends the epoch); a skipped batch must not
    # be replayed by the next run.
    args = train_args(sample, interrupted, *blow_up, "train.time_limit=1e-9")
    assert resume_in_steps(args, interrupted) == batches + 1
    assert pd.read_csv(interrupted / "metrics.csv")["skipped_steps"].tolist() == skipped


def test_multistep_milestones_count_epochs_from_the_start_of_training(sample):
    config = load_config(
        CONFIG, overrides(sample, "train.schedule=multistep", "train.milestones=[2,3]", "train.warmup_epochs=1")
    )
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)

    def lr_at(step):
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    lr, gamma = config.train.lr, config.train.gamma
    assert lr_at(5) < lr  # warming up
    assert lr_at(10) == pytest.approx(lr) and lr_at(19) == pytest.approx(lr)
    assert lr_at(20) == pytest.approx(lr * gamma) and lr_at(29) == pytest.approx(lr * gamma)
    assert lr_at(30) == pytest.approx(lr * gamma**2)


def test_summary_records_precision_device_and_the_ema_decay_reached(sample, tmp_path):
    run = tmp_path / "run"
    extra = ["train.epochs=1", "train.ema=true", "train.ema_decay=0.9998", "train.device=cpu"]
    assert main(train_args(sample, run, *extra)) == 0
    summary = json.loads((run / "summary.json").read_text())
    steps = load_checkpoint(run / "last.pt")["step"]
    assert summary["precision"] == "fp32" and summary["device_name"] == "cpu"
    assert summary["ema_decay_reached"] == pytest.approx(1 - steps ** (-2 / 3), abs=1e-6)  # timm: 1 - (1 + t)^-2/3
    assert summary["ema_decay_reached"] < 0.9998
    environment = load_checkpoint(run / "last.pt")["environment"]
    assert environment["precision"] == "fp32" and environment["processes"] == 1
    assert environment["torch"] == torch.__version__


def host_reads_during_training(monkeypatch, sample, run, *extra) -> int:
    """How often training reads a tensor's value on the host: on a GPU each read waits for all queued work."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    assert main(train_args(sample, run, "train.epochs=1", "train.log_every=0", *extra)) == 0
    monkeypatch.undo()
    return len(reads)


def test_training_steps_make_no_host_reads(monkeypatch, sample, tmp_path):
    # Twice the steps, the same number of reads: they happen per epoch (and per log line), never per step.
    few = host_reads_during_training(monkeypatch, sample, tmp_path / "few", "train.batch_size=16")
    many = host_reads_during_training(monkeypatch, sample, tmp_path / "many", "train.batch_size=8")
    assert 0 < few == many


def test_a_checkpoint_from_before_a_new_config_key_resumes(sample, tmp_path):
    run, trainer = trained(sample, tmp_path)
    saved = load_checkpoint(run / "last.pt")
    older = {**saved["config"], "data": {k: v for k, v in saved["config"]["data"].items() if k != "augment_device"}}
    save_checkpoint(run / "last.pt", {**saved, "config": older})
    assert trainer.resume()
