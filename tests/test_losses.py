"""Margin losses: exact values on known angles, the scale and margin rule, the BN neck, and real runs (ArcFace from
scratch, and the two-stage recipe's fine-tuning from a cross-entropy run)."""

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from facenext.cli import main
from facenext.config import config_from_dict, load_config
from facenext.errors import UserError
from facenext.losses import (
    CosineClassifier,
    MarginLoss,
    build_loss,
    default_margin,
    default_scale,
    resolve_config,
    scale_bound,
)
from facenext.models import create_model, embedding_size, fuse_batchnorm
from facenext.run import RunDir

from .conftest import CONFIG, ROOT, TINY_MODEL, TINY_TRAIN, assert_user_error, facenext, train_args


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


def test_margin_loss_with_an_explicit_linear_classifier_is_a_user_error(sample, tmp_path):
    result = facenext(*train_args(sample, tmp_path / "r", "train.loss=cosface", "model.classifier=linear"))
    assert_user_error(result, "model.classifier=cosine")


def test_margin_losses_refuse_mixup_and_cutmix_in_one_line(sample, tmp_path):
    result = facenext(*train_args(sample, tmp_path / "r", "train.loss=arcface", "train.mixup=0.2"))
    assert_user_error(result, "train.loss=arcface", "train.mixup=0")
    assert not (tmp_path / "r").exists(), "refused before the run folder is made"


# --- the scale and margin rule -------------------------------------------------------------------------------------


def test_default_scale_is_the_papers_for_many_classes_and_lower_for_few():
    assert scale_bound(40) == pytest.approx(8.05, abs=0.01)  # (39/40) log(39 * 0.99 / 0.01)
    assert scale_bound(8631) == pytest.approx(13.66, abs=0.01)
    # The numbers the docs give: ORL's 40 identities, F23's 7001, F26's 8631, and the papers' 64 from CASIA up.
    assert [default_scale(c) for c in (8, 40, 7001, 8631, 10_575, 85_742)] == [26, 37, 62, 63, 64, 64]
    for c in (2, 8, 40, 8631):
        assert default_scale(c) > 2 * scale_bound(c), "room above the bound: features never reach their centres"


def test_default_margin_shrinks_only_for_embeddings_small_for_the_class_count():
    assert default_margin("arcface", 40, 64) == 0.5  # a simplex: 40 centres at least 90 degrees apart
    assert default_margin("arcface", 40, 16) == 0.41
    assert default_margin("arcface", 8631, 400) == 0.5  # the lean model on F26
    assert default_margin("arcface", 8631, 64) == 0.5
    assert default_margin("arcface", 8631, 32) == 0.36
    assert default_margin("cosface", 8631, 32) == 0.25
    assert default_margin("arcface", 8631, 4) == 0.1, "never below a fifth of the paper's"


def resolved(*overrides, num_classes=40, embed_dim=160):
    return resolve_config(load_config(ROOT / "configs" / "demo.yaml", overrides), num_classes, embed_dim)


def test_nulls_become_what_the_loss_trains_with_and_explicit_values_win():
    ce = resolved()
    assert (ce.model.classifier, ce.model.cosine_scale, ce.train.margin, ce.train.label_smoothing) == (
        "linear", None, None, 0.1,
    )  # fmt: skip
    arc = resolved("train.loss=arcface")
    assert (arc.model.classifier, arc.model.cosine_scale, arc.train.margin, arc.train.label_smoothing) == (
        "cosine", 37.0, 0.5, 0.0,
    )  # fmt: skip
    own = resolved("train.loss=cosface", "model.cosine_scale=16", "train.margin=0.2", "train.label_smoothing=0")
    assert (own.model.cosine_scale, own.train.margin) == (16.0, 0.2)
    assert resolved("model.classifier=cosine").model.cosine_scale == 37.0, "cosine logits under CE need a scale too"


def test_explicit_label_smoothing_under_a_margin_loss_is_refused():
    with pytest.raises(UserError, match=r"train\.label_smoothing=0"):
        resolved("train.loss=arcface", "train.label_smoothing=0.1")


def test_configs_of_runs_before_the_rule_still_compare_equal():
    """Runs before the null defaults recorded a linear classifier, scale 30 and smoothing 0.1: a resume compares
    them, after ``resolve_config``, with today's config."""
    old = load_config(ROOT / "configs" / "demo.yaml").to_dict()
    old["model"].update(classifier="linear", cosine_scale=30.0)
    old["train"].update(label_smoothing=0.1)
    saved = resolve_config(config_from_dict(old), 40, 160, strict=False)
    assert saved.to_dict() == resolved().to_dict()


# --- the BN neck ---------------------------------------------------------------------------------------------------


def test_bn_neck_embedding_is_the_classifier_input_and_batch_independent_in_eval():
    torch.manual_seed(0)
    model = create_model("lean_nano", 5, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), neck="bn")
    assert not model.head.neck.bias.requires_grad and not model.head.neck.bias.any(), "BNNeck's bias stays zero"
    assert model.head.fc.bias is None
    x = torch.randn(6, 3, 32, 32)
    model.train()
    for _ in range(3):  # running statistics away from their initial 0 and 1
        model(x)
    batch = model(x, return_feats=True)
    assert batch.shape == (6, 32) and torch.allclose(batch.mean(0), torch.zeros(32), atol=1e-5), "batch statistics"
    model.eval()
    feats = model(x, return_feats=True)
    assert torch.allclose(model(x[:1], return_feats=True), feats[:1], atol=1e-5), "eval: running statistics"
    assert not torch.allclose(feats, batch, atol=1e-3)
    assert torch.allclose(model.head.fc(feats), model(x), atol=1e-5), "the embedding is what the classifier sees"
    assert fuse_batchnorm(model) > 0
    assert torch.allclose(model(x, return_feats=True), feats, atol=1e-4), "folding the trunk keeps the neck"


def test_bn_neck_refuses_a_projection():
    with pytest.raises(ValueError, match=r"model\.neck=none"):
        create_model("lean_nano", 5, embed_dim=16, neck="bn")


def test_a_timm_backbone_trains_with_arcface_and_a_bn_neck(sample, tmp_path):
    """The face head is the same for every backbone: a timm model (refused ArcFace and the neck before) trains with
    both, and its run's embedding is the neck's output at timm's feature size."""
    run = tmp_path / "timm_arcface"
    timm_convnext = ["model.name=timm:convnext_atto", "model.dims=[16,32,48,64]", "model.depths=[1,1,1,1]"]
    args = ["train", CONFIG, "--out", run, f"data.root={sample}", *timm_convnext, *TINY_TRAIN, "train.epochs=2"]
    assert main([str(a) for a in [*args, "train.loss=arcface", "model.neck=bn"]]) == 0
    loss = pd.read_csv(run / "metrics.csv")["train_loss"]
    assert len(loss) == 2 and loss.notna().all() and loss.iloc[-1] < loss.iloc[0], list(loss)
    model = RunDir(run).load_model()
    assert isinstance(model.head.fc, CosineClassifier) and isinstance(model.head.neck, torch.nn.BatchNorm1d)
    with torch.no_grad():
        feats = model(torch.rand(4, 3, 48, 48), return_feats=True)
    assert feats.shape == (4, 64) and torch.isfinite(feats).all()
    assert embedding_size(load_config(run / "config.yaml")) == 64


@pytest.fixture(scope="module")
def arcface_bn_run(sample, tmp_path_factory):
    """ArcFace from scratch with a BN neck, 4 epochs on the sample competition."""
    run = tmp_path_factory.mktemp("runs") / "arcface_bn"
    assert main(train_args(sample, run, "train.epochs=4", "train.loss=arcface", "model.neck=bn")) == 0
    return run


def test_arcface_run_records_its_rule_values_and_its_loss_falls(arcface_bn_run):
    config = yaml.safe_load((arcface_bn_run / "config.yaml").read_text())
    assert config["model"]["classifier"] == "cosine" and config["model"]["cosine_scale"] == default_scale(8)
    assert (config["train"]["margin"], config["train"]["label_smoothing"]) == (0.5, 0.0)
    loss = pd.read_csv(arcface_bn_run / "metrics.csv")["train_loss"]
    assert len(loss) == 4 and loss.iloc[-1] < 0.9 * loss.iloc[0], list(loss)


def test_arcface_run_embeddings_are_finite_and_logits_bounded_by_the_scale(arcface_bn_run, sample):
    model = RunDir(arcface_bn_run).load_model()
    scale = model.head.fc.scale
    images = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        feats, logits = model(images, return_feats=True), model(images)
    assert feats.shape == (4, 64) and torch.isfinite(feats).all()
    assert logits.abs().max() <= scale + 1e-3 and logits.abs().max() > 0.1 * scale


def test_bn_neck_run_resumes(arcface_bn_run, sample, capsys):
    capsys.readouterr()
    assert main(train_args(sample, arcface_bn_run, "train.epochs=5", "train.loss=arcface", "model.neck=bn")) == 0
    assert "resuming" in capsys.readouterr().out
    assert len(pd.read_csv(arcface_bn_run / "metrics.csv")) == 5


# --- the two-stage recipe ------------------------------------------------------------------------------------------


def test_two_stage_arcface_starts_from_the_cross_entropy_run(trained_run, sample, tmp_path, capsys):
    stage2 = ROOT / "configs" / "f26_two_stage_arcface.yaml"
    config = load_config(stage2)
    assert config.train.init_from == "runs/f26_two_stage_ce" and config.train.loss == "arcface"
    assert (load_config(ROOT / "configs" / "f26_two_stage_ce.yaml").train.loss) == "ce"
    run = tmp_path / "stage2"
    args = ["train", stage2, "--out", run, f"data.root={sample}", "data.term=auto", *TINY_MODEL, *TINY_TRAIN]
    args += ["train.epochs=1", "train.lr=1e-4", "data.augment=light", f"train.init_from={trained_run}"]
    assert main([str(a) for a in args]) == 0
    assert "class centres start from that run's classifier rows" in capsys.readouterr().out
    rows = torch.load(trained_run / "best.pt", weights_only=True)["model"]["head.fc.weight"]
    centres = torch.load(run / "best.pt", weights_only=True)["model"]["head.fc.weight"]
    assert F.cosine_similarity(rows, centres).min() > 0.9, "the centres started from the rows and moved a little"


def test_resuming_with_another_margin_names_the_key(arcface_bn_run, sample):
    args = train_args(sample, arcface_bn_run, "train.epochs=5", "train.loss=arcface", "model.neck=bn")
    assert_user_error(facenext(*args, "train.margin=0.3"), "different config (train.margin)")
