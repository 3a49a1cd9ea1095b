"""Tests for fedweave.models: the built-in zoo, options and user factories."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from fedweave.errors import ConfigError, ModelError
from fedweave.models import MODELS, build_model, group_count

DIGITS = (1, 8, 8)
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model_with_a_description():
    assert set(MODELS) == {"logistic", "mlp", "mlp_norm", "cnn", "lenet5", "resnet"}
    assert all(isinstance(d, str) and d for d in MODELS.values())


@pytest.mark.parametrize("shape", [DIGITS, MNIST, CIFAR], ids=["digits", "mnist", "cifar"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_a_batch_to_logits(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_dropout_and_seeded_build_is_reproducible(name):
    torch.manual_seed(7)
    a = build_model(name, MNIST, 10)
    torch.manual_seed(7)
    b = build_model(name, MNIST, 10)
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in a.modules())
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_known_parameter_counts():
    # 2NN of McMahan et al.: 784*200+200 + 200*200+200 + 200*10+10 = 199,210.
    assert n_params(build_model("mlp", MNIST, 10)) == 199_210
    # Their CNN on MNIST: 1,663,370 (conv 832 + 51,264; fc 3136*512+512 = 1,606,144; 5,130).
    assert n_params(build_model("cnn", MNIST, 10)) == 1_663_370
    # Classic LeNet-5 on 28x28 with a padded first conv: 61,706.
    assert n_params(build_model("lenet5", MNIST, 10)) == 61_706
    # Logistic regression on 8x8 digits: 64*10 + 10.
    assert n_params(build_model("logistic", DIGITS, 10)) == 650


def test_mlp_hidden_sizes():
    model = build_model("mlp", (60,), 3, hidden=[32, 16])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(60, 32), (32, 16), (16, 3)]
    # No hidden layers: logistic regression.
    model = build_model("mlp", (60,), 3, hidden=[])
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]


@pytest.mark.parametrize("hidden", [[0], [200, -1], [1.5], ["8"], [True], "200"])
def test_invalid_hidden_is_a_config_error(hidden):
    with pytest.raises(ConfigError, match="hidden"):
        build_model("mlp", MNIST, 10, hidden=hidden)


def test_resnet_norm_choices():
    batch = build_model("resnet", CIFAR, 10, norm="batch")
    buffers = dict(batch.named_buffers())
    assert any(k.endswith("running_mean") for k in buffers)
    assert any(isinstance(m, nn.BatchNorm2d) for m in batch.modules())

    group = build_model("resnet", CIFAR, 10)  # default: GroupNorm, no buffers
    norms = [m for m in group.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not list(group.buffers())
    assert all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in norms)

    plain = build_model("resnet", CIFAR, 10, norm="none")
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in plain.modules())
    # Without normalisation the convolutions keep their bias.
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_resnet_width_sets_stage_channels():
    model = build_model("resnet", CIFAR, 10, width=8)
    assert model.fc.in_features == 32  # 4 * width
    with pytest.raises(ConfigError, match="width"):
        build_model("resnet", CIFAR, 10, width=0)


def test_group_count_divides_channels():
    assert group_count(16) == 8
    assert group_count(12) == 6
    assert group_count(10) == 5
    assert group_count(3) == 3
    assert group_count(7) == 7


@pytest.mark.parametrize("shape", [(60,), (1, 40)])
def test_flat_models_take_any_shape_but_image_models_refuse(shape):
    for name in ("logistic", "mlp"):
        assert build_model(name, shape, 10)(torch.randn(2, *shape)).shape == (2, 10)
    for name in ("cnn", "lenet5", "resnet"):
        with pytest.raises(ModelError, match=r"logistic, mlp"):
            build_model(name, shape, 10)


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="Unknown model 'vgg'"):
        build_model("vgg", MNIST, 10)
    with pytest.raises(ConfigError, match="norm"):
        build_model("resnet", CIFAR, 10, norm="layer")
    with pytest.raises(ConfigError, match="depth"):
        build_model("cnn", MNIST, 10, depth=3)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("mlp", (0, 4), 10)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("mlp", MNIST, 0)


# --- user factories by import path -------------------------------------------------------

USER_MODULE = '''
from torch import nn

class Wrapped:
    @staticmethod
    def make(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))

def make(input_shape, num_classes, scale=1):
    size = 1
    for s in input_shape:
        size *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(size, num_classes * scale))

def not_a_module(input_shape, num_classes):
    return "nope"

def broken(input_shape, num_classes):
    raise RuntimeError("out of ideas")

NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``fw_test_user_models`` importable from a temporary directory."""
    (tmp_path / "fw_test_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "fw_test_user_models", raising=False)
    return "fw_test_user_models"


def test_user_factory_by_import_path(user_module):
    model = build_model(f"{user_module}:make", (1, 4, 4), 3, scale=2)
    assert model(torch.randn(5, 1, 4, 4)).shape == (5, 6)
    # A dotted attribute path reaches into classes.
    model = build_model(f"{user_module}:Wrapped.make", (7,), 2)
    assert model(torch.randn(1, 7)).shape == (1, 2)


def test_user_factory_errors(user_module):
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        build_model(f"{user_module}:not_a_module", (4,), 2)
    with pytest.raises(ModelError, match="out of ideas"):
        build_model(f"{user_module}:broken", (4,), 2)
    with pytest.raises(ModelError, match="no attribute 'missing'"):
        build_model(f"{user_module}:missing", (4,), 2)
    with pytest.raises(ModelError, match="not callable"):
        build_model(f"{user_module}:NOT_CALLABLE", (4,), 2)
    with pytest.raises(ModelError, match="unexpected keyword"):
        build_model(f"{user_module}:make", (4,), 2, colour="red")


def test_unimportable_model_path():
    with pytest.raises(ModelError, match=r"fw_no_such_module_xyz.*ModuleNotFoundError"):
        build_model("fw_no_such_module_xyz:make", (4,), 2)
    with pytest.raises(ModelError, match="package.module:factory"):
        build_model("fw_no_such_module_xyz:", (4,), 2)
