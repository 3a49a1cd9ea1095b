"""Staleness functions (fedweave.aggregate.staleness) and FedAsync (Xie et al. 2019)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedweave
from fedweave import ConfigError, load_config
from fedweave.aggregate import STALENESS_FUNCTIONS, constant, hinge, polynomial, staleness_weight
from fedweave.messages import Update
from fedweave.methods import build_method
from fedweave.methods.base import ServerContext
from fedweave.methods.fedasync import FedAsyncStrategy
from fedweave.sim.events import VirtualClock

# -- staleness functions -----------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0, 1, 2, 3, 4, 5, 7, 10, 100, 12345])
def test_staleness_functions_match_their_formulas(tau):
    assert constant(tau) == 1.0
    for a in (0.0, 0.5, 1.0, 2.0):
        assert polynomial(tau, a) == pytest.approx((tau + 1) ** (-a), rel=1e-15)
    for a, b in ((10.0, 4.0), (1.0, 0.0), (0.5, 2.0), (3.0, 7.0)):
        expected = 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
        assert hinge(tau, a, b) == pytest.approx(expected, rel=1e-15)


def test_staleness_hand_values():
    assert polynomial(3, 0.5) == pytest.approx(0.5)  # 1/sqrt(4)
    assert polynomial(0, 0.5) == 1.0
    assert hinge(4, 10, 4) == 1.0
    assert hinge(5, 10, 4) == pytest.approx(1 / 11)
    assert hinge(6, 10, 4) == pytest.approx(1 / 21)
    assert staleness_weight("polynomial", 8, a=1.0) == pytest.approx(1 / 9)
    assert staleness_weight("hinge", 6, a=10, b=4) == pytest.approx(1 / 21)
    assert staleness_weight("constant", 50, a=3, b=1) == 1.0


def test_staleness_is_one_at_zero_monotone_and_in_unit_interval():
    taus = np.arange(0, 500)
    for kind in STALENESS_FUNCTIONS:
        s = staleness_weight(kind, taus, a=0.7, b=3.0)
        assert isinstance(s, np.ndarray) and s.shape == taus.shape
        assert s[0] == 1.0
        assert np.all(s > 0) and np.all(s <= 1)
        assert np.all(np.diff(s) <= 0)
    # vectorised values equal the scalar ones
    assert np.allclose(polynomial(taus, 0.5), [polynomial(int(t), 0.5) for t in taus], rtol=1e-14, atol=0)


def test_staleness_rejects_bad_input():
    with pytest.raises(ValueError):
        polynomial(-1, 0.5)
    with pytest.raises(ValueError):
        hinge(1, -1.0, 2.0)
    with pytest.raises(ValueError):
        staleness_weight("exponential", 1)
    with pytest.raises(ValueError):
        constant(float("nan"))


# -- FedAsync ----------------------------------------------------------------------------------


def ctx(n=4):
    return ServerContext(spec=None, num_clients=n, client_sizes=np.ones(n, dtype=np.int64), clock=VirtualClock(), seed=0)


def update(cid, base_version, params, base):
    return Update(cid, base_version, params - base, torch.zeros(0), 10, 3, {"loss": 1.0}, params=params.clone())


@pytest.mark.parametrize("kind,a,b", [("constant", 0.5, 4), ("polynomial", 0.5, 4), ("polynomial", 1.0, 4), ("hinge", 10, 1)])
def test_fedasync_mixes_with_staleness_scaled_alpha(kind, a, b):
    torch.manual_seed(0)
    c = ctx()
    s = FedAsyncStrategy(alpha=0.8, staleness=kind, a=a, b=b)
    state = s.init(torch.randn(7, dtype=torch.float64), torch.zeros(0), c)
    x_models = {}
    expected = state.params.clone()
    for step, base in enumerate([0, 0, 1, 0, 3, 2]):  # staleness = version - base
        x_new = torch.randn(7, dtype=torch.float64)
        tau = state.version - base
        alpha_t = 0.8 * staleness_weight(kind, tau, a, b)
        expected = (1 - alpha_t) * expected + alpha_t * x_new
        before = state.params
        before_copy = before.clone()
        state = s.on_update(update(step % 4, base, x_new, before), state, c)
        assert torch.equal(before, before_copy)  # never modified in place
        assert state.version == step + 1
        assert state.extra["alpha_t"] == pytest.approx(alpha_t)
        assert torch.allclose(state.params, expected, atol=1e-12)
        x_models[step] = x_new


def test_fedasync_alpha_one_without_staleness_takes_the_client_model():
    c = ctx()
    s = FedAsyncStrategy(alpha=1.0, staleness="constant")
    state = s.init(torch.zeros(3), torch.zeros(0), c)
    x = torch.tensor([1.0, 2.0, 3.0])
    state = s.on_update(update(0, 0, x, state.params), state, c)
    assert torch.equal(state.params, x)


def test_fedasync_mixes_float_buffers():
    c = ctx()
    s = FedAsyncStrategy(alpha=0.5, staleness="constant")
    state = s.init(torch.zeros(2), torch.tensor([1.0, 1.0]), c)
    u = Update(0, 0, torch.ones(2), torch.tensor([3.0, 5.0]), 1, 1, params=torch.ones(2))
    state = s.on_update(u, state, c)
    assert torch.allclose(state.buffers, torch.tensor([2.0, 3.0]))


def test_fedasync_params_are_validated():
    for bad in ({"alpha": 0}, {"alpha": 1.2}, {"staleness": "exp"}, {"a": -1}, {"alhpa": 0.5}):
        cfg = load_config({"method": {"name": "fedasync", **bad}, "schedule": {"mode": "async"}})
        with pytest.raises(ConfigError):
            build_method(cfg)
    with pytest.raises(ConfigError, match="async"):
        build_method(load_config({"method": {"name": "fedasync"}}))  # sync mode is refused
    strategy, client = build_method(load_config({"method": {"name": "fedasync", "alpha": 0.9, "staleness": "hinge", "a": 10, "b": 4},
                                                 "schedule": {"mode": "async"}}))
    assert (strategy.alpha, strategy.staleness, strategy.a, strategy.b) == (0.9, "hinge", 10, 4)
    assert client.upload_full_model


def test_fedasync_engine_run_uploads_full_models(tiny, tmp_path):
    cfg = tiny({"method": {"name": "fedasync"}, "schedule": {"mode": "async", "concurrency": 3, "max_arrivals": 12},
                "system": {"profile": "tiers"}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    assert res.status == "completed"
    last = res.history[-1]
    assert last["arrivals"] == 12 and last["version"] == 12
    assert 0 < last["alpha_t"] <= 0.6
    assert last["staleness_mean"] > 0
    p = res.params.numel()
    # each upload is the full model (P floats) plus scalars; the downlink the model too
    assert last["bytes_up"] >= 12 * 4 * p and last["bytes_up"] < 12 * (4 * p + 100)
    assert math.isfinite(last["loss"])
