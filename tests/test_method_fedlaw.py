"""FedLAW: frozen λ (size weights) and γ = 1 is FedAvg; learning lowers the proxy loss;
no proxy set (or too small a one) is refused with a message."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

import fedweave
from fedweave.experiment import build_experiment
from fedweave.methods.fedlaw import FedLAWParams, FedLAWStrategy, named_tensors

PROXY = {"data": {"server_fraction": 0.1}}


def test_frozen_weights_and_shrink_equal_fedavg(tiny, tmp_path):
    avg = fedweave.run(tiny({**PROXY, "method": {"name": "fedavg"}}), out=tmp_path / "avg")
    law = fedweave.run(tiny({**PROXY, "method": {"name": "fedlaw", "learn_weights": False, "learn_shrink": False}}),
                       out=tmp_path / "law")
    assert torch.allclose(law.params, avg.params, atol=1e-6)
    assert law.history[-1]["accuracy"] == pytest.approx(avg.history[-1]["accuracy"])
    assert law.history[-1]["fedlaw_gamma"] == 1.0


def test_learned_aggregate_lowers_the_proxy_loss(tiny):
    exp = build_experiment(fedweave.load_config(tiny({**PROXY, "method": {"name": "fedlaw", "server_epochs": 10}})))
    data = exp.data
    ctx = SimpleNamespace(spec=exp.spec, server_data=data.server_data(), model_factory=exp.model_factory, seed=0)
    strategy = FedLAWStrategy(FedLAWParams(server_epochs=10), "classification")
    state = strategy.init(exp.initial_params, exp.initial_buffers, ctx)
    torch.manual_seed(0)
    deltas = 0.05 * torch.randn(3, exp.spec.num_params)
    sizes = torch.tensor([10.0, 20.0, 30.0])
    lam, gamma = strategy.learn(state.params, state.buffers, deltas, sizes, ctx, 0)
    assert float(lam.sum()) == pytest.approx(1.0) and gamma > 0

    def proxy_loss(weights, g):
        w = g * (state.params + weights.to(deltas.dtype) @ deltas)
        x, y = ctx.server_data
        with torch.no_grad():
            return float(exp.task.loss(functional_call(strategy.module, named_tensors(exp.spec, w), (x,)), y))

    assert proxy_loss(lam, gamma) < proxy_loss(sizes / sizes.sum(), 1.0)


def test_fedlaw_reports_gamma_and_weights_every_round(tiny, tmp_path):
    res = fedweave.run(tiny({**PROXY, "method": {"name": "fedlaw"}}), out=tmp_path / "law")
    for record in res.history:
        assert record["fedlaw_gamma"] > 0
        assert sum(record["fedlaw_weights"]) == pytest.approx(1.0)
        assert len(record["fedlaw_weights"]) == 3  # the cohort


def test_refuses_without_a_proxy_set(tiny, tmp_path):
    with pytest.raises(fedweave.ConfigError, match="server_fraction"):
        fedweave.run(tiny({"method": {"name": "fedlaw"}}), out=tmp_path / "none")
    assert not (tmp_path / "none").exists()  # refused before the run directory exists


def test_refuses_a_proxy_set_too_small(tiny, tmp_path):
    with pytest.raises(fedweave.ConfigError, match="at least 10000"):
        fedweave.run(tiny({**PROXY, "method": {"name": "fedlaw", "min_proxy_examples": 10000}}), out=tmp_path / "small")
