import pytest

from facenext.config import config_from_dict, load_config
from facenext.errors import UserError

from .conftest import ROOT


def test_every_shipped_config_loads():
    for path in (ROOT / "configs").glob("*.yaml"):
        assert load_config(path).model.name


def test_overrides_are_typed_like_the_yaml():
    config = load_config(ROOT / "configs" / "demo.yaml", ["train.epochs=3", "train.lr=3e-3", "model.dims=[8,16]"])
    assert config.train.epochs == 3
    assert config.train.lr == pytest.approx(0.003)
    assert config.model.dims == [8, 16]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"epochz": 3}}, "unknown config key train.epochz"),
        ({"train": {"epochs": "many"}}, "train.epochs must be int"),
        ({"data": {"mean": [0.5, 0.5]}}, "data.mean must have 3 items"),
        ({"model": 3}, "section model must be a mapping"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(values, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(values)


def test_override_without_equals_sign_is_refused():
    with pytest.raises(UserError, match=r"key\.path=value"):
        config_from_dict({}, ["train.epochs"])
