"""FedIns: per-instance top-k key selection, SSF mixing, the frozen pretrained backbone and
the config-time checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.methods.fedins import SSFPoolNet


def _net(pool=5, k=2):
    torch.manual_seed(0)
    return SSFPoolNet((6,), 3, hidden=(4,), pool_size=pool, top_k=k)


def test_selection_picks_the_keys_nearest_the_query():
    net = _net()
    with torch.no_grad():
        net.keys.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]))
    queries = torch.tensor([[0.9, 0.1, 0, 0], [0, 0, 2.0, 1.5], [1, 1.2, 0, 0]])
    idx, matched = net.select(queries)
    cos = F.normalize(queries, dim=1) @ F.normalize(net.keys.detach(), dim=1).t()
    assert [set(r) for r in idx.tolist()] == [{0, 4}, {2, 3}, {4, 1}]
    assert [set(r) for r in idx.tolist()] == [set(r) for r in cos.topk(2, dim=1).indices.tolist()]
    # key similarity: the mean over the batch of the summed cosines of the selected keys
    assert float(matched.detach()) == pytest.approx(float(cos.gather(1, idx).sum() / 3))
    matched.backward()
    assert net.keys.grad[[0, 1, 2, 3, 4]].abs().sum(1).gt(0).all()  # every selected key gets a gradient


def test_forward_uses_the_mean_of_the_selected_ssf_entries():
    net = _net()
    x = torch.randn(7, 6)
    out = net(x)
    idx, _ = net.select(net.query(x))
    h = torch.relu(net.backbone[0](x) * net.ssf_scale[0][idx].mean(1) + net.ssf_shift[0][idx].mean(1))
    expected = torch.stack([net.head_weight[i].mean(0) @ h[b] + net.head_bias[i].mean(0) for b, i in enumerate(idx)])
    assert torch.allclose(out, expected, atol=1e-5)
    # the query is the frozen backbone's own feature, without SSF
    assert torch.allclose(net.query(x), torch.relu(net.backbone[0](x)))


def _cfg(tiny, method="fedins", **kwargs):
    return tiny({"data": {"server_fraction": 0.2}, "method": {"name": method},
                 "model": {"name": "ssf_pool", "hidden": [16], "kwargs": {"pool_size": 4, "top_k": 2,
                                                                            "pretrain": {"epochs": 5}, **kwargs}}})


def test_backbone_is_pretrained_frozen_and_not_sent(tiny, tmp_path):
    cfg = _cfg(tiny)
    exp = build_experiment(load_config(cfg))
    assert [s.name for s in exp.spec.group("frozen")] == ["backbone.0.weight", "backbone.0.bias"]
    pool = 4 * 16 * 2 + 4 * 10 * 16 + 4 * 10 + 4 * 16  # scales+shifts, head pool, head bias, keys
    assert exp.spec.num_params == pool
    torch.manual_seed(0)
    a, b = exp.model_factory(), exp.model_factory()
    assert torch.equal(a.backbone[0].weight, b.backbone[0].weight)  # every worker gets the same backbone
    from fedweave.experiment import ModelFactory

    raw = ModelFactory(**{k: getattr(exp.model_factory.inner, k) for k in ("name", "input_shape", "num_classes", "kwargs", "seed")})()
    assert not torch.equal(raw.backbone[0].weight, a.backbone[0].weight)  # pretrained, not the initial one
    res = fedweave.run(cfg, out=tmp_path / "run")
    assert res.status == "completed" and res.params.numel() == pool
    assert res.summary["pretrain_split_accuracy"] > 0.5 and 0 < res.summary["pretrain_test_accuracy"] <= 1
    assert res.summary["bytes_up"] == 3 * 3 * (pool * 4 + 8 * 5)  # the backbone never travels


def test_fedavg_on_the_same_frozen_backbone(tiny, tmp_path):
    res = fedweave.run(_cfg(tiny, "fedavg", pool_size=1, top_k=1), out=tmp_path / "fedavg")
    assert res.status == "completed" and res.summary["final_accuracy"] > 0.3


@pytest.mark.parametrize("change, message", [
    ({"data": {"server_fraction": 0.0}}, "server_fraction"),
    ({"model": {"name": "mlp", "kwargs": {}}}, "model.name=ssf_pool"),
    ({"model": {"kwargs": {"pool_size": 2, "top_k": 3}}}, "top_k <= pool_size"),
    ({"model": {"kwargs": {"pretrain": {"epoch": 3}}}}, "unknown key"),
])
def test_config_errors(tiny, change, message):
    from fedweave.config import deep_merge

    with pytest.raises(ConfigError, match=message):
        build_experiment(load_config(deep_merge(_cfg(tiny), change)))
