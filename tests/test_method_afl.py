"""Staleness-aware AFL (wireless UAM paper): β = (0.5 + e^(−Δt/T))/N per arrival."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedweave
from fedweave import ConfigError, load_config
from fedweave.messages import Update
from fedweave.methods import build_method
from fedweave.methods.afl_staleness import AFLStalenessStrategy
from fedweave.methods.base import ServerContext
from fedweave.sim.events import VirtualClock

N = 5


def ctx():
    return ServerContext(spec=None, num_clients=N, client_sizes=np.ones(N, dtype=np.int64), clock=VirtualClock(), seed=0)


def up(cid, params, base):
    return Update(cid, 0, params - base, torch.zeros(0), 10, 2, {"loss": 0.0}, params=params.clone())


def test_beta_from_the_gap_between_a_devices_uploads_fixed_time_scale():
    c = ctx()
    s = AFLStalenessStrategy("exp", time_scale_s=10.0)
    state = s.init(torch.zeros(4, dtype=torch.float64), torch.zeros(0), c)
    expected = state.params.clone()
    last = {}
    g = torch.Generator().manual_seed(1)
    for t, cid in [(3.0, 0), (5.0, 1), (8.0, 0), (30.0, 0), (31.0, 1), (31.0, 2)]:
        c.clock.advance_to(t)
        gap = t - last.get(cid, 0.0)  # first upload: gap from the start of the run
        beta = (0.5 + math.exp(-gap / 10.0)) / N
        w = torch.randn(4, generator=g, dtype=torch.float64)
        expected = expected + beta * (w - expected)
        before, before_copy = state.params, state.params.clone()
        last_before = state.extra["last_upload_s"]
        last_copy = last_before.clone()
        state = s.on_update(up(cid, w, state.params), state, c)
        assert torch.equal(before, before_copy) and torch.equal(last_before, last_copy)  # never in place
        assert state.extra["beta"] == pytest.approx(beta, rel=1e-12)
        assert torch.allclose(state.params, expected, atol=1e-12)
        assert 0.5 / N < beta <= 1.5 / N
        last[cid] = t
    assert state.version == 6
    assert state.extra["last_upload_s"].tolist() == [30.0, 31.0, 31.0, 0.0, 0.0]


def test_auto_time_scale_is_the_running_mean_gap():
    c = ctx()
    s = AFLStalenessStrategy("exp", "auto")
    state = s.init(torch.zeros(2), torch.zeros(0), c)
    gaps = []
    last = {}
    for t, cid in [(4.0, 0), (6.0, 1), (10.0, 0), (100.0, 1)]:
        c.clock.advance_to(t)
        gap = t - last.get(cid, 0.0)
        gaps.append(gap)
        scale = sum(gaps) / len(gaps)
        state = s.on_update(up(cid, torch.ones(2), state.params), state, c)
        assert state.extra["time_scale_s"] == pytest.approx(scale)
        assert state.extra["beta"] == pytest.approx((0.5 + math.exp(-gap / scale)) / N)
        last[cid] = t
    # the first upload of a device always has gap = its mean: e^(-1)
    c2 = ctx()
    s2 = AFLStalenessStrategy("exp", "auto")
    st = s2.init(torch.zeros(2), torch.zeros(0), c2)
    c2.clock.advance_to(1234.5)
    st = s2.on_update(up(3, torch.ones(2), st.params), st, c2)
    assert st.extra["beta"] == pytest.approx((0.5 + math.exp(-1.0)) / N)


def test_a_slow_device_gets_less_weight_than_a_fast_one():
    c = ctx()
    s = AFLStalenessStrategy("exp", "auto")
    state = s.init(torch.zeros(2), torch.zeros(0), c)
    betas = {}
    for t, cid in [(1.0, 0), (2.0, 0), (3.0, 0), (10.0, 1), (11.0, 0), (20.0, 1)]:
        c.clock.advance_to(t)
        state = s.on_update(up(cid, torch.ones(2), state.params), state, c)
        betas.setdefault(cid, []).append(state.extra["beta"])
    assert betas[0][-1] > betas[1][-1]


def test_constant_mode_is_the_notebooks_1_5_over_n():
    c = ctx()
    s = AFLStalenessStrategy("constant")
    state = s.init(torch.zeros(3, dtype=torch.float64), torch.zeros(0), c)
    for t in (1.0, 50.0, 9999.0):
        c.clock.advance_to(t)
        before = state.params
        w = torch.full((3,), t, dtype=torch.float64)
        state = s.on_update(up(1, w, before), state, c)
        assert state.extra["beta"] == pytest.approx(1.5 / N)
        assert torch.allclose(state.params, before + 1.5 / N * (w - before))


def test_literal_one_second_time_scale_by_hand():
    # time_scale_s = 1.0 is the notebook's e^(−Δt), Δt in seconds. Device 0 uploads at 0.5 s
    # (gap 0.5 from the start) then at 3.5 s (gap 3.0); device 1 at 0.5 s + 0.2 = 0.7 s.
    # β = (0.5 + e^(−gap))/5: 0.5 s → (0.5 + 0.60653)/5 = 0.22131; 0.7 s → (0.5 + 0.49659)/5 = 0.19932;
    # 3.0 s → (0.5 + 0.04979)/5 = 0.10996.
    c = ctx()
    s, _ = build_method(load_config({"method": {"name": "afl_staleness", "beta_mode": "exp", "time_scale_s": 1.0},
                                     "schedule": {"mode": "async"}}))
    state = s.init(torch.zeros(1, dtype=torch.float64), torch.zeros(0), c)
    for t, cid, beta in [(0.5, 0, 0.22131), (0.7, 1, 0.19932), (3.5, 0, 0.10996)]:
        c.clock.advance_to(t)
        before = float(state.params[0])
        state = s.on_update(up(cid, torch.ones(1, dtype=torch.float64), state.params), state, c)
        assert state.extra["beta"] == pytest.approx(beta, abs=1e-5)
        assert float(state.params[0]) == pytest.approx(before + beta * (1.0 - before), abs=1e-5)
        assert state.extra["time_scale_s"] == 1.0


def test_default_beta_mode_is_exp_with_auto_time_scale():
    s, _ = build_method(load_config({"method": {"name": "afl_staleness"}, "schedule": {"mode": "async"}}))
    assert s.beta_mode == "exp" and s.time_scale_s == "auto"


def test_afl_config():
    with pytest.raises(ConfigError):
        build_method(load_config({"method": {"name": "afl_staleness", "time_scale_s": -1}, "schedule": {"mode": "async"}}))
    with pytest.raises(ConfigError):
        build_method(load_config({"method": {"name": "afl_staleness", "beta_mode": "linear"}, "schedule": {"mode": "async"}}))
    s, client = build_method(load_config({"method": {"name": "afl_staleness", "time_scale_s": 60},
                                          "schedule": {"mode": "async"}}))
    assert s.time_scale_s == 60 and client.upload_full_model


def test_afl_engine_run(tiny, tmp_path):
    cfg = tiny({"method": {"name": "afl_staleness"}, "schedule": {"mode": "async", "concurrency": 3, "max_arrivals": 15},
                "system": {"profile": "tiers"}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    last = res.history[-1]
    assert res.status == "completed" and last["version"] == 15
    assert 0.5 / 5 < last["beta"] <= 1.5 / 5
    assert last["time_scale_s"] > 0
