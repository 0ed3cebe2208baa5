import pytest
import timm
import torch
from torch import nn

from facenext.checkpoint import load_checkpoint, save_checkpoint
from facenext.cli import main
from facenext.engine.train import parameter_groups
from facenext.models import ConvNeXt, count_parameters, create_model, fuse_batchnorm, load_timm_state_dict
from facenext.run import RunDir

from .conftest import assert_same_tensors, facenext, train_args


def test_lean_matches_the_seed_parameter_count():
    assert count_parameters(create_model("lean", num_classes=7001)) == 12_101_901


def test_tiny_matches_the_paper_and_timm_logits():
    ours = create_model("tiny", num_classes=1000).eval()
    assert count_parameters(ours) == 28_589_128
    reference = timm.create_model("convnext_tiny", pretrained=False).eval()
    load_timm_state_dict(ours, reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-4


def test_return_feats_gives_the_embedding_and_projection_sets_its_size():
    model = create_model("lean_nano", num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    assert model(x).shape == (3, 10)
    assert model(x, return_feats=True).shape == (3, 160)
    projected = create_model("lean_nano", num_classes=10, embed_dim=32).eval()
    assert projected(x, return_feats=True).shape == (3, 32) and projected.embed_dim == 32


def test_drop_path_rises_linearly_over_all_blocks():
    model = ConvNeXt(num_classes=5, dims=(8, 16), depths=(2, 3), drop_path_rate=0.4)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for stage in model.stages for b in stage.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_gradients_reach_every_parameter():
    model = create_model("lean_nano", num_classes=4, drop_path_rate=0.0)
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_drop_path_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = create_model("tiny", num_classes=4, dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_channels_last_gives_the_same_outputs():
    model = create_model("lean_nano", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_timm_backbones_get_the_same_interface():
    model = create_model("timm:resnet18", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 7)
    assert model(x, return_feats=True).shape == (2, model.embed_dim)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="lean"):
        create_model("resnet", num_classes=3)


def test_folding_batchnorm_keeps_the_function():
    torch.manual_seed(0)
    model = create_model("lean", num_classes=50)
    for module in model.modules():  # non-trivial statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected, feats = model(x), model(x, return_feats=True)
        assert fuse_batchnorm(model) == 1 + 3 + 19
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)
        assert torch.allclose(model(x, return_feats=True), feats, atol=1e-4, rtol=1e-4)
    assert fuse_batchnorm(create_model("tiny", num_classes=5).eval()) == 0


def test_folding_batchnorm_of_timms_convnext_keeps_the_function():
    torch.manual_seed(0)
    model = timm.models.convnext.ConvNeXt(
        dims=(8, 16, 24, 32),
        depths=(1, 1, 1, 1),
        norm_layer=nn.BatchNorm2d,
        conv_mlp=True,
        ls_init_value=None,
        num_classes=5,
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert fuse_batchnorm(model) == 1 + 3 + 4, "stem, downsampling, blocks; the head's norm stays"
        assert torch.allclose(model(x), expected, atol=1e-5)


# --- checkpoints written before the face head was its own module ---------------------------------------------------

# The state dicts of two tiny in-house models (5 classes, dims (8,), depths (1,)) as the code before the split wrote
# them, "name:shape": the paper's norm with a projection (model.embed_dim=4), and the lean model with a BN neck.
OLD_TINY_PROJECTED = (
    "stem.0.weight:8x3x4x4 stem.0.bias:8 stem.1.weight:8 stem.1.bias:8 stages.0.blocks.0.gamma:8 "
    "stages.0.blocks.0.conv_dw.weight:8x1x7x7 stages.0.blocks.0.conv_dw.bias:8 stages.0.blocks.0.norm.weight:8 "
    "stages.0.blocks.0.norm.bias:8 stages.0.blocks.0.mlp.fc1.weight:32x8x1x1 stages.0.blocks.0.mlp.fc1.bias:32 "
    "stages.0.blocks.0.mlp.fc2.weight:8x32x1x1 stages.0.blocks.0.mlp.fc2.bias:8 head.norm.weight:8 head.norm.bias:8 "
    "head.embed.0.weight:4x8 head.embed.1.weight:4 head.embed.1.bias:4 head.embed.1.running_mean:4 "
    "head.embed.1.running_var:4 head.embed.1.num_batches_tracked: head.fc.weight:5x4 head.fc.bias:5"
)
OLD_LEAN_BN_NECK = (
    "stem.0.weight:8x3x4x4 stem.0.bias:8 stem.1.weight:8 stem.1.bias:8 stem.1.running_mean:8 stem.1.running_var:8 "
    "stem.1.num_batches_tracked: stages.0.blocks.0.conv_dw.weight:8x1x7x7 stages.0.blocks.0.conv_dw.bias:8 "
    "stages.0.blocks.0.norm.weight:8 stages.0.blocks.0.norm.bias:8 stages.0.blocks.0.norm.running_mean:8 "
    "stages.0.blocks.0.norm.running_var:8 stages.0.blocks.0.norm.num_batches_tracked: "
    "stages.0.blocks.0.mlp.fc1.weight:32x8x1x1 stages.0.blocks.0.mlp.fc1.bias:32 "
    "stages.0.blocks.0.mlp.fc2.weight:8x32x1x1 stages.0.blocks.0.mlp.fc2.bias:8 head.neck.weight:8 head.neck.bias:8 "
    "head.neck.running_mean:8 head.neck.running_var:8 head.neck.num_batches_tracked: head.fc.weight:5x8"
)


def old_state_dict(layout: str) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes of ``layout`` (positive variances, integer batch counts)."""
    state = {}
    for entry in layout.split():
        name, shape = entry.split(":")
        size = [int(n) for n in shape.split("x")] if shape else []
        state[name] = torch.tensor(7) if name.endswith("num_batches_tracked") else torch.rand(size) + 0.5
    return state


@pytest.mark.parametrize(
    ("layout", "options"),
    [(OLD_TINY_PROJECTED, {"name": "tiny", "embed_dim": 4}), (OLD_LEAN_BN_NECK, {"name": "lean_nano", "neck": "bn"})],
)
def test_in_house_checkpoints_of_the_old_layout_load(layout, options):
    state = old_state_dict(layout)
    model = create_model(num_classes=5, dims=(8,), depths=(1,), **options).eval()
    model.load_state_dict(state)  # strict: every name is still where it was
    assert_same_tensors(model.state_dict(), state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model(x, return_feats=True)
        assert feats.shape == (2, model.embed_dim) and torch.allclose(model.head.fc(feats), model(x))


def test_timm_checkpoints_of_the_old_layout_load():
    """The timm wrapper before the split held the whole timm classifier as ``model``: that is its state dict."""
    torch.manual_seed(0)
    old = nn.Module()
    old.model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    old.eval()
    model = create_model("timm:resnet10t", num_classes=5).eval()
    model.load_state_dict(old.state_dict())
    assert torch.equal(model.head.fc.weight, old.model.fc.weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), old.model(x), atol=1e-5)
        assert torch.allclose(model(x, return_feats=True), old.model.forward_head(old.model.forward_features(x), True))


def test_parameter_groups_follow_timm_and_keep_two_groups_decayed_first():
    vit = create_model("timm:vit_tiny_patch16_224", num_classes=5, img_size=32, depth=1)
    decay, no_decay = parameter_groups(vit, 0.05)
    names = {id(p): name for name, p in vit.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "head.fc.bias"} <= skipped, "timm's no_weight_decay()"
    assert all(p.ndim > 1 for p in decay["params"]) and (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0)
    ours = create_model("lean_nano", num_classes=5, dims=(8,), depths=(1,))
    without = parameter_groups(ours, 0.0)
    assert [len(g["params"]) for g in without] == [5, 9], "no decay still makes the two groups checkpoints hold"


def test_a_timm_run_saved_before_the_head_split_averages_and_starts_another(sample, tmp_path):
    """``facenext average`` and ``train.init_from`` match weights by name: an old timm run's ``model.*`` names are
    renamed as loading renames them (a run resumed across the split keeps top files of both layouts)."""
    run = tmp_path / "timm"
    timm_model = ["model.name=timm:convnext_atto", "model.dims=[8,16,24,32]", "model.depths=[1,1,1,1]"]
    assert main(train_args(sample, run, *timm_model, "train.epochs=2", "train.keep_top_k=2")) == 0
    tops = RunDir(run).top_files()
    new = load_checkpoint(tops[0])["model"]

    def old_name(key: str) -> str:  # the wrapper held timm's whole model, classifier included, as ``model``
        return "model." + key.removeprefix("backbone.")

    old = {old_name(k): v for k, v in new.items()}
    assert set(old) != set(new)
    save_checkpoint(tops[0], {**load_checkpoint(tops[0]), "model": old})
    assert main(["average", str(run)]) == 0
    averaged = load_checkpoint(run / "averaged.pt")["model"]
    other = load_checkpoint(tops[1])["model"]
    assert set(averaged) == set(new) and torch.allclose(
        averaged["head.fc.weight"], (new["head.fc.weight"] + other["head.fc.weight"]) / 2
    )
    second = tmp_path / "second"
    args = train_args(sample, second, *timm_model, "train.epochs=1", f"train.init_from={tops[0]}")
    result = facenext(*args)
    assert result.returncode == 0 and f"initialised {len(new)} of {len(new)} tensors" in result.stdout, result.stderr


def test_gdc_pool_weighs_positions_and_takes_other_input_sizes():
    from facenext.config import Config
    from facenext.errors import UserError
    from facenext.models import model_from_config

    config = Config()
    config.model.name, config.model.pool, config.data.image_size = "lean_nano", "gdc", 64
    model = model_from_config(config, 5).eval()
    pool = model.head.pool
    assert pool.grid == 2, "a 64 px input leaves a 2 x 2 map after the 32-fold downsampling"
    features = torch.randn(3, 160, 2, 2)
    with torch.no_grad():
        pool.conv.weight.fill_(0.25)  # equal weights: GDC becomes global average pooling (BN in eval, fresh stats)
        assert torch.allclose(model.head.features(features), features.mean((2, 3)), atol=1e-4)
        pool.conv.weight[:, :, 0, 0] = 1.0  # weight on one corner: the corner now counts four times the others
        expected = (features.sum((2, 3)) * 0.25 + features[:, :, 0, 0] * 0.75) / (1 + 1e-5) ** 0.5
        assert torch.allclose(model.head.features(features), expected, atol=1e-4)
        # another input size (a TTA scale) is averaged onto the grid first
        assert model(torch.randn(2, 3, 96, 96), return_feats=True).shape == (2, 160)
    config.model.name = "timm:resnet10t"
    with pytest.raises(UserError, match="timm models pool alone"):
        model_from_config(config, 5)


def test_a_gdc_run_trains_and_its_embeddings_verify(sample, tmp_path):
    """A run with the GDC pool through the CLI: its saved config rebuilds the pool for predict and verify."""
    run = tmp_path / "gdc"
    assert main(train_args(sample, run, "model.pool=gdc", "data.image_size=64", "train.epochs=2")) == 0
    weights = load_checkpoint(run / "best.pt")["model"]
    assert weights["head.pool.conv.weight"].shape[-2:] == (2, 2), "the sample's 64 px leave a 2 x 2 map"
    result = facenext("verify", run, "--out", tmp_path / "verify", "--expand", "0", "--rerank", "0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "verify" / "verification_submission.csv").is_file()


def test_gdc_grid_follows_the_stages_a_config_gives():
    two_stages = create_model("lean_nano", 5, dims=(8, 16), depths=(1, 1), pool="gdc", image_size=64)
    assert two_stages.head.pool.grid == 8, "64 px: 16 after the stem, 8 after the one downsampling stage"
    with torch.no_grad():
        assert two_stages.forward_features(torch.randn(1, 3, 64, 64)).shape[-1] == two_stages.head.pool.grid
