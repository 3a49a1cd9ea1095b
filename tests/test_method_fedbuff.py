"""FedBuff (Nguyen et al. 2022): staleness-weighted buffered deltas and a server SGD step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedweave
from fedweave import ConfigError, load_config
from fedweave.aggregate import polynomial
from fedweave.messages import Update
from fedweave.methods import build_method
from fedweave.methods.base import ServerContext
from fedweave.methods.fedbuff import FedBuffStrategy
from fedweave.sim.events import VirtualClock


def ctx(n=6):
    return ServerContext(spec=None, num_clients=n, client_sizes=np.full(n, 20), clock=VirtualClock(), seed=0)


def make_updates(base_version, k=4, p=9, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Update(cid, base_version, torch.randn(p, generator=g, dtype=torch.float64), torch.zeros(0), n, 5)
            for cid in range(k)]


def test_fedbuff_equals_fedavg_without_staleness_equal_sizes_server_lr_1():
    c = ctx()
    x0 = torch.randn(9, dtype=torch.float64)
    buff, _ = build_method(load_config({"method": {"name": "fedbuff"}, "schedule": {"mode": "buffered"}}))
    avg, _ = build_method(load_config({"method": {"name": "fedavg"}}))
    sb, sa = buff.init(x0, torch.zeros(0), c), avg.init(x0, torch.zeros(0), c)
    expected = x0.clone()
    for r in range(3):  # three buffers, each trained from the current version (τ = 0)
        ups = make_updates(sb.version, seed=r)
        expected = expected + torch.stack([u.delta for u in ups]).mean(0)
        sb = buff.aggregate(ups, sb, c)
        sa = avg.aggregate(ups, sa, c)
        assert torch.allclose(sb.params, sa.params, atol=1e-12)
        assert torch.allclose(sb.params, expected, atol=1e-12)


def test_fedbuff_differs_from_fedavg_with_unequal_sizes():
    c = ctx()
    x0 = torch.zeros(9, dtype=torch.float64)
    ups = make_updates(0)
    ups[0].num_examples = 200
    buff = FedBuffStrategy()
    avg, _ = build_method(load_config({"method": {"name": "fedavg"}}))
    sb = buff.aggregate(ups, buff.init(x0, torch.zeros(0), c), c)
    sa = avg.aggregate(ups, avg.init(x0, torch.zeros(0), c), c)
    assert torch.allclose(sb.params, torch.stack([u.delta for u in ups]).mean(0))  # uniform 1/K
    assert not torch.allclose(sb.params, sa.params)


def test_fedbuff_staleness_weights_the_deltas():
    c = ctx()
    s = FedBuffStrategy(staleness="polynomial", a=0.5)
    state = s.init(torch.zeros(9, dtype=torch.float64), torch.zeros(0), c)
    state.version = 5
    ups = make_updates(0)
    for u, base in zip(ups, (5, 4, 2, 0)):
        u.base_version = base
    taus = [0, 1, 3, 5]
    expected = sum(polynomial(t, 0.5) * u.delta for t, u in zip(taus, ups)) / 4
    out = s.aggregate(ups, state, c)
    assert torch.allclose(out.params, expected, atol=1e-12)
    assert out.version == 6
    assert out.extra["staleness_weight_mean"] == pytest.approx(sum(polynomial(t, 0.5) for t in taus) / 4)


def test_fedbuff_server_momentum_and_lr_match_hand_computation():
    c = ctx()
    lr, beta = 0.7, 0.9
    s = FedBuffStrategy(server_lr=lr, server_momentum=beta, staleness="constant")
    x = torch.randn(9, dtype=torch.float64)
    state = s.init(x.clone(), torch.zeros(0), c)
    m = torch.zeros(9, dtype=torch.float64)
    for r in range(3):
        ups = make_updates(state.version, seed=10 + r)
        d = torch.stack([u.delta for u in ups]).mean(0)
        m = beta * m - d
        x = x - lr * m
        before = state.params
        before_copy = before.clone()
        state = s.aggregate(ups, state, c)
        assert torch.equal(before, before_copy)
        assert torch.allclose(state.params, x, atol=1e-12)


def test_fedbuff_config_checks():
    with pytest.raises(ConfigError, match="buffered"):
        build_method(load_config({"method": {"name": "fedbuff"}, "schedule": {"mode": "async"}}))
    with pytest.raises(ConfigError):
        build_method(load_config({"method": {"name": "fedbuff", "combiner": "median"}, "schedule": {"mode": "buffered"}}))
    s, _ = build_method(load_config({"method": {"name": "fedbuff", "server_lr": 0.5, "server_momentum": 0.3, "a": 1.0},
                                     "schedule": {"mode": "buffered"}}))
    assert (s.opt.lr, s.opt.momentum, s.a) == (0.5, 0.3, 1.0)


def test_fedbuff_engine_first_buffer_equals_one_fedavg_round(tiny, tmp_path):
    """All N clients dispatched at once (concurrency = buffer = N): the first buffer has no
    staleness and is one uniform-weight FedAvg round over every client."""
    n = 5
    buffered = tiny({"method": {"name": "fedbuff"},
                     "schedule": {"mode": "buffered", "concurrency": n, "buffer_size": n, "max_arrivals": n, "clients_per_round": n}})
    sync = tiny({"method": {"name": "fedavg", "weighting": "uniform"}, "schedule": {"rounds": 1, "clients_per_round": n}})
    a = fedweave.run(buffered, out=tmp_path / "buff")
    b = fedweave.run(sync, out=tmp_path / "avg")
    assert a.history[-1]["version"] == 1 and a.history[-1]["staleness_max"] == 0
    assert torch.allclose(a.params, b.params, atol=1e-6)


def test_fedbuff_engine_merges_every_k_arrivals(tiny, tmp_path):
    cfg = tiny({"method": {"name": "fedbuff"}, "schedule": {"mode": "buffered", "concurrency": 4, "buffer_size": 3,
                                                            "max_arrivals": 14}, "system": {"profile": "tiers"}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    last = res.history[-1]
    assert last["arrivals"] == 14 and last["version"] == 4  # the partial buffer (2) is not merged
    assert 0 < last["staleness_weight_mean"] <= 1
