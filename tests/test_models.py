import pytest
import timm
import torch

from facenext.models import ConvNeXt, count_parameters, create_model, fuse_batchnorm, load_timm_state_dict


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
