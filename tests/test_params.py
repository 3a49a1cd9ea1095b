"""ParamSpec roles and FlatModel views (fedweave.params)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fedweave
from fedweave.errors import ConfigError, ModelError
from fedweave.messages import Broadcast, Update
from fedweave.params import FlatModel, ParamSpec


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    # 0: Linear(3,4) -> 12+4 ; 1: BatchNorm1d(4) -> weight 4, bias 4, running_mean 4, running_var 4,
    # num_batches_tracked (int) ; 2: Linear(4,2) -> 8+2
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def by_name(spec: ParamSpec):
    return {s.name: s for s in spec.segments}


def test_parameters_trainable_by_default_and_bn_buffers_are_buffers():
    spec = ParamSpec.from_module(bn_net())
    segs = by_name(spec)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"):
        assert segs[name].role == "trainable"
        assert not segs[name].is_buffer
    assert segs["1.running_mean"].role == "buffer"
    assert segs["1.running_var"].role == "buffer"
    assert segs["1.num_batches_tracked"].role == "int_buffer"
    assert segs["1.num_batches_tracked"].offset == -1
    assert spec.num_params == 12 + 4 + 4 + 4 + 8 + 2
    assert spec.num_buffers == 8
    assert spec.num_personal == 0
    # no float vector holds the integer buffer
    assert sum(spec.sizes.values()) == 34 + 8


def test_trainable_segments_are_contiguous_in_module_order():
    spec = ParamSpec.from_module(bn_net())
    train = spec.group("trainable")
    assert [s.name for s in train] == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    offset = 0
    for s in train:
        assert s.offset == offset
        offset += s.numel
    assert offset == spec.num_params
    buf = spec.group("buffer")
    assert [(s.name, s.offset) for s in buf] == [("1.running_mean", 0), ("1.running_var", 4)]


def test_roles_patterns_make_personal_and_frozen():
    roles = {"2.*": "personal", "0.*": "frozen"}
    spec = ParamSpec.from_module(bn_net(), roles)
    segs = by_name(spec)
    assert segs["2.weight"].role == "personal" and segs["2.bias"].role == "personal"
    assert segs["0.weight"].role == "frozen" and segs["0.bias"].role == "frozen"
    assert segs["1.weight"].role == "trainable"
    # frozen and personal segments are not in the shared trainable vector
    assert spec.num_params == 8
    assert spec.num_personal == 10
    assert spec.sizes["frozen"] == 16
    assert spec.num_buffers == 8


def test_first_matching_pattern_wins():
    spec = ParamSpec.from_module(bn_net(), {"2.bias": "frozen", "2.*": "personal"})
    segs = by_name(spec)
    assert segs["2.bias"].role == "frozen"
    assert segs["2.weight"].role == "personal"


def test_requires_grad_false_defaults_to_frozen():
    net = bn_net()
    net[0].weight.requires_grad_(False)
    segs = by_name(ParamSpec.from_module(net))
    assert segs["0.weight"].role == "frozen"
    assert segs["0.bias"].role == "trainable"


def test_personal_buffer_goes_to_its_own_group():
    spec = ParamSpec.from_module(bn_net(), {"1.running_*": "personal"})
    assert spec.num_buffers == 0
    assert spec.num_personal_buffers == 8
    assert spec.num_params == 34


def test_invalid_roles_rejected():
    with pytest.raises(ConfigError, match="Allowed"):
        ParamSpec.from_module(bn_net(), {"0.*": "shared"})
    with pytest.raises(ConfigError, match="buffer"):
        ParamSpec.from_module(bn_net(), {"0.weight": "buffer"})
    with pytest.raises(ConfigError, match="trainable"):
        ParamSpec.from_module(bn_net(), {"1.running_mean": "trainable"})


def test_mixed_float_dtypes_rejected():
    net = bn_net()
    net[2].double()
    with pytest.raises(ModelError, match="dtype"):
        ParamSpec.from_module(net)


def test_layers_group_weight_and_bias():
    spec = ParamSpec.from_module(bn_net())
    assert spec.layers() == [("0", slice(0, 16)), ("1", slice(16, 24)), ("2", slice(24, 34))]
    # with the BN layer frozen, layers cover only the trainable vector
    spec = ParamSpec.from_module(bn_net(), {"1.*": "frozen"})
    assert spec.layers() == [("0", slice(0, 16)), ("2", slice(16, 26))]


def test_flat_model_copies_initial_values():
    net = bn_net()
    expected = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    fm = FlatModel(net)
    assert torch.equal(fm.params, expected)
    assert torch.equal(fm.buffers, torch.cat([torch.zeros(4), torch.ones(4)]))


def test_flat_views_modify_module_parameters():
    net = bn_net()
    fm = FlatModel(net)
    with torch.no_grad():
        fm.params.fill_(0.5)
    assert torch.all(net[0].weight == 0.5)
    assert torch.all(net[2].bias == 0.5)
    with torch.no_grad():
        fm.params[16:20] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # 1.weight
    assert torch.equal(net[1].weight.detach(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with torch.no_grad():
        fm.buffers.copy_(torch.arange(8.0))
    assert torch.equal(net[1].running_mean, torch.arange(4.0))
    assert torch.equal(net[1].running_var, torch.arange(4.0, 8.0))
    # and the other way: module writes are visible in the flat vector
    with torch.no_grad():
        net[2].weight.mul_(0).add_(-7.0)
    assert torch.all(fm.params[24:32] == -7.0)


def test_bn_forward_updates_flat_buffers_and_int_buffer_stays_in_module():
    net = bn_net()
    fm = FlatModel(net)
    net.train()
    net(torch.randn(8, 3))
    assert not torch.equal(fm.buffers[:4], torch.zeros(4))  # running mean moved, in the flat vector
    assert int(net[1].num_batches_tracked) == 1
    assert set(fm.int_buffers()) == {"1.num_batches_tracked"}


def test_gradients_land_in_flat_grad():
    net = bn_net()
    fm = FlatModel(net)
    x = torch.randn(6, 3)
    loss = net(x).pow(2).sum()
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert fm.grad.abs().sum() > 0
    assert torch.equal(fm.grad, expected)
    # the gradients are views: zeroing the flat gradient zeroes the module's
    fm.zero_grad()
    assert torch.all(net[0].weight.grad == 0)
    # second backward accumulates into the same flat storage
    net(x).pow(2).sum().backward()
    assert torch.allclose(fm.grad, expected)


def test_frozen_parameters_get_no_gradient_and_personal_do():
    net = bn_net()
    fm = FlatModel(net, {"0.*": "frozen", "2.*": "personal"})
    assert not net[0].weight.requires_grad
    net(torch.randn(5, 3)).sum().backward()
    assert net[0].weight.grad is None
    assert fm.grad.numel() == fm.spec.num_params + fm.spec.num_personal == 18
    assert torch.equal(fm.grad[8:], torch.cat([net[2].weight.grad.flatten(), net[2].bias.grad.flatten()]))
    assert fm.trained.numel() == 18
    assert torch.equal(fm.frozen, torch.cat([net[0].weight.detach().flatten(), net[0].bias.detach().flatten()]))


def test_check_aliasing_detects_swapped_parameter_and_rebind_fixes_it():
    net = bn_net()
    fm = FlatModel(net)
    fm.check_aliasing()
    net[2].weight = nn.Parameter(torch.randn(2, 4))
    with pytest.raises(ModelError, match="2.weight"):
        fm.check_aliasing()
    fm.rebind()
    fm.check_aliasing()
    with torch.no_grad():
        fm.params[24:32].fill_(3.0)
    assert torch.all(net[2].weight == 3.0)


def test_check_aliasing_detects_swapped_buffer_and_grad():
    net = bn_net()
    fm = FlatModel(net)
    net[1].running_mean = torch.zeros(4)
    with pytest.raises(ModelError, match="running_mean"):
        fm.check_aliasing()
    fm.rebind()
    fm.check_aliasing()
    net[0].bias.grad = torch.zeros(4)
    with pytest.raises(ModelError, match="gradient"):
        fm.check_aliasing()


def test_frozen_and_personal_not_counted_in_message_bytes():
    spec = ParamSpec.from_module(bn_net(), {"0.*": "frozen", "2.*": "personal"})
    assert spec.bytes_of("trainable") == 8 * 4
    fm = FlatModel(bn_net(), {"0.*": "frozen", "2.*": "personal"})
    up = Update(0, 0, fm.params.clone(), fm.buffers.clone(), num_examples=3, metrics={"loss": 1.0})
    assert up.num_bytes() == (8 + 8) * 4 + 8 * 5
    down = Broadcast(0, fm.params, fm.buffers)
    assert down.num_bytes() == (8 + 8) * 4 + 8


def test_run_with_frozen_and_personal_layers_counts_only_shared_bytes(tiny, tmp_path):
    # mlp [16] on digits: 0 Flatten, 1 Linear(64,16), 2 ReLU, 3 Linear(16,10)
    cfg = tiny({"model": {"roles": {"1.*": "frozen", "3.bias": "personal"}},
                "schedule": {"rounds": 2, "clients_per_round": 2}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    P = 16 * 10
    assert res.summary["num_params"] == P
    assert res.params.numel() == P
    K = 2 * 2
    assert res.summary["bytes_up"] == K * (P * 4 + 8 * 5)
    assert res.summary["bytes_down"] == K * (P * 4 + 8)
