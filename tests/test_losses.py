"""Margin losses: exact values on known angles, and a real fine-tuning run from a cross-entropy run."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from facenext.cli import main
from facenext.losses import CosineClassifier, MarginLoss, build_loss

from .conftest import ROOT, TINY_MODEL, TINY_TRAIN


def logits_for(angles, scale):
    """Two classes; the true class (0) at the given angles, the other at 90 degrees."""
    cos = torch.tensor([[math.cos(a), 0.0] for a in angles])
    return scale * cos, torch.zeros(len(angles), dtype=torch.long)


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.0])
def test_arcface_adds_the_margin_to_the_angle(angle):
    scale, margin = 10.0, 0.5
    logits, labels = logits_for([angle], scale)
    expected = F.cross_entropy(torch.tensor([[scale * math.cos(angle + margin), 0.0]]), labels)
    assert MarginLoss("arcface", scale, margin)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_arcface_falls_back_to_a_linear_penalty_past_pi_minus_m():
    scale, margin, angle = 10.0, 0.5, 3.0  # angle + margin > pi: cos would rise again
    logits, labels = logits_for([angle], scale)
    fallback = math.cos(angle) - math.sin(math.pi - margin) * margin
    expected = F.cross_entropy(torch.tensor([[scale * fallback, 0.0]]), labels)
    assert MarginLoss("arcface", scale, margin)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_cosface_subtracts_the_margin_from_the_cosine():
    scale, margin = 30.0, 0.35
    logits, labels = logits_for([0.7, 1.2], scale)
    shifted = logits.clone()
    shifted[:, 0] -= scale * margin
    expected = F.cross_entropy(shifted, labels)
    assert MarginLoss("cosface", scale, margin)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected > F.cross_entropy(logits, labels), "the margin makes the task harder"


def test_cosine_classifier_is_scale_times_cosine():
    head = CosineClassifier(4, 3, scale=16.0)
    x = torch.randn(5, 4)
    expected = 16.0 * F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(head(x), expected, atol=1e-5)
    assert torch.allclose(head(3 * x), head(x), atol=1e-5), "only directions matter"


def test_margin_losses_refuse_mixup():
    with pytest.raises(ValueError, match="mixup"):
        build_loss("arcface", 0.0, soft_targets=True, scale=30.0, margin=None)


def test_arcface_fine_tuning_from_a_cross_entropy_run(trained_run, sample, tmp_path, capsys):
    run = tmp_path / "arcface"
    args = ["train", str(ROOT / "configs" / "demo.yaml"), "--out", str(run), f"data.root={sample}", *TINY_MODEL]
    args += [*TINY_TRAIN, "train.epochs=6", "train.loss=arcface", "model.classifier=cosine"]
    assert main([*args, f"train.init_from={trained_run}"]) == 0
    assert "initialised" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_dev_acc"] >= 0.5, "classification still works through the cosine classifier"
    assert main(["verify", str(run), "--out", str(tmp_path / "verify")]) == 0


def test_margin_loss_without_cosine_classifier_is_a_user_error(sample, tmp_path, capsys):
    args = ["train", str(ROOT / "configs" / "demo.yaml"), "--out", str(tmp_path / "r"), f"data.root={sample}"]
    assert main([*args, "train.loss=cosface"]) == 2
    assert "model.classifier=cosine" in capsys.readouterr().err
