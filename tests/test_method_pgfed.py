"""PGFed / PGFedMo: the correction term, the a-update and the server bookkeeping against hand
computations on a quadratic problem, and the extra payloads counted in bytes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import fedweave
from fedweave.messages import Broadcast, Update
from fedweave.methods.base import ClientJob, ServerContext
from fedweave.methods.pgfed import PGFedClient, PGFedStrategy, full_gradient
from fedweave.params import FlatModel
from fedweave.train import TrainSettings

D = 3
MU, LAM = 0.1, 0.01


class Point(nn.Module):
    """f(θ) = ½‖θ − b‖² through a model that outputs θ for every input (y rows hold b)."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, x):
        return self.theta.expand(len(x), -1)


class Quadratic:
    def loss(self, out, y):
        return 0.5 * ((out - y) ** 2).sum(1).mean()


def quadratic_worker(theta0, b, n=4):
    model = FlatModel(Point(theta0))
    data = SimpleNamespace(x=torch.zeros(n, 1, dtype=torch.float64), y=torch.tensor(np.array([b] * n), dtype=torch.float64),
                           client_train=[torch.arange(n)])
    return SimpleNamespace(model=model, task=Quadratic(), data=data)


def ctx(n):
    return ServerContext(spec=None, num_clients=n, client_sizes=np.ones(n), clock=None, seed=0)


def test_client_step_correction_and_a_update_match_hand_computation():
    theta0, b = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 2.0])
    g_prev = np.array([[1.0, 0.0, 2.0], [-1.0, 3.0, 0.0]])  # g_j of the previous uploaders j = 0, 1
    a0 = np.array([0.5, 0.25])
    lm = MU * np.array([0.3, -0.2])  # μ ℓ⁻_j as the server sends it
    c = MU * a0 @ g_prev
    mean_grad = MU * g_prev.mean(0)
    lr = 0.1
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    payload = {"c": t(c), "mean_grad": t(mean_grad), "loss_minus": t(lm), "a": t(a0)}
    worker = quadratic_worker(theta0, b)
    job = ClientJob(0, 0, 1, Broadcast(1, t(theta0), torch.zeros(0, dtype=torch.float64), payload), None,
                    TrainSettings(epochs=None, local_steps=1, batch_size=4, lr=lr))
    out = PGFedClient(LAM, beta=0.0).train(job, worker, torch.Generator().manual_seed(0))

    # one SGD step on ∇f + c_i;  a ← max(0, a − λ(μℓ⁻ + ⟨θ0, ḡ⟩)) at the pre-step θ
    theta1 = theta0 - lr * ((theta0 - b) + c)
    a1 = np.maximum(0.0, a0 - LAM * (lm + theta0 @ mean_grad))
    g1 = theta1 - b
    loss_minus = 0.5 * np.sum((theta1 - b) ** 2) - g1 @ theta1
    np.testing.assert_allclose(worker.model.params.numpy(), theta1, rtol=1e-12)
    np.testing.assert_allclose(out.update.delta.numpy(), theta1 - theta0, rtol=1e-12)
    np.testing.assert_allclose(out.update.payload["a"].numpy(), a1, rtol=1e-12)
    np.testing.assert_allclose(out.update.payload["grad"].numpy(), g1, rtol=1e-12)
    assert out.update.payload["loss_minus"] == pytest.approx(loss_minus, rel=1e-12)
    np.testing.assert_allclose(out.state["theta"].numpy(), theta1)  # the personalized model


def test_a_is_projected_onto_nonnegative():
    a = torch.tensor([0.001, 1.0], dtype=torch.float64)
    hook = PGFedClient(lam=1.0, beta=0.0).pgfed_hook(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                                                     torch.tensor([0.5, -5.0], dtype=torch.float64), a)
    hook(torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))  # ⟨θ, ḡ⟩ = 0
    assert a.tolist() == [0.0, 6.0]


def test_pgfedmo_blends_the_correction_with_the_clients_last_one():
    client = PGFedClient(LAM, beta=0.5)
    new, old = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    job = SimpleNamespace(broadcast=SimpleNamespace(payload={"c": new}), state={"c_prev": old})
    assert torch.allclose(client.correction(job), 0.5 * new + 0.5 * old)
    job.state = None  # first correction: taken as is
    assert torch.equal(client.correction(job), new)
    assert torch.equal(PGFedClient(LAM, beta=0.0).correction(SimpleNamespace(broadcast=job.broadcast, state={"c_prev": old})), new)


def test_server_bookkeeping_and_per_client_correction():
    n, k = 4, 2
    strategy = PGFedStrategy(MU, k)
    c = ctx(n)  # the server's per-client store (the a-matrix rows) lives in the context
    state = strategy.init(torch.zeros(D, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), c)
    assert all(torch.allclose(strategy.a_row(i, c, torch.float64), torch.full((n,), 1 / k, dtype=torch.float64))
               for i in range(n))
    assert strategy.configure([0, 1], state, c)[0].payload == {}  # round 1: no correction yet
    g = {1: torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), 3: torch.tensor([-1.0, 3.0, 0.0], dtype=torch.float64)}
    ups = [Update(cid, 0, torch.full((D,), float(cid), dtype=torch.float64), torch.zeros(0, dtype=torch.float64),
                  num_examples=ne, payload={"grad": g[cid], "loss_minus": lm})
           for cid, ne, lm in ((1, 1, 0.3), (3, 3, -0.2))]
    state = strategy.aggregate(ups, state, c)
    assert torch.allclose(state.params, torch.full((D,), (1 * 1 + 3 * 3) / 4, dtype=torch.float64))  # size-weighted
    assert state.extra["prev_ids"].tolist() == [1, 3]
    assert torch.allclose(state.extra["mean_grad"], MU * (g[1] + g[3]) / 2)  # ḡ includes μ
    assert torch.allclose(state.extra["prev_loss_minus"], MU * torch.tensor([0.3, -0.2], dtype=torch.float64))
    b = strategy.configure([2], state, c)[2]
    assert torch.allclose(b.payload["c"], MU * (0.5 * g[1] + 0.5 * g[3]))  # c_i = μ Σ_j a_ij g_j
    assert torch.allclose(b.payload["a"], torch.full((2,), 0.5, dtype=torch.float64))
    # client 0's a-row is updated from its upload (a new row: a snapshot of the store keeps the old)
    snapshot = c.client_store.state_dict()
    a0 = torch.tensor([0.2, 0.7], dtype=torch.float64)
    up = Update(0, 1, torch.zeros(D, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), num_examples=1,
                payload={"grad": g[1], "loss_minus": 0.0, "a": a0})
    state = strategy.aggregate([up], state, c)
    assert torch.allclose(strategy.a_row(0, c, torch.float64)[[1, 3]], a0)
    assert 0 not in snapshot and torch.allclose(strategy.a_row(2, c, torch.float64), torch.full((n,), 1 / k, dtype=torch.float64))


def test_full_gradient_is_the_mean_of_minibatch_gradients():
    worker = quadratic_worker([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], n=5)
    worker.data.y[3:] = 2.0  # two batches of sizes 3 and 2 with different targets
    grad, loss, n = full_gradient(worker.model, worker.task, worker.data.x, worker.data.y, torch.arange(5), 3)
    expected = ((torch.ones(3) - 0) + (torch.ones(3) - 2)) / 2
    assert n == 5 and torch.allclose(grad, expected.double())
    assert loss == pytest.approx((3 * 1.5 + 2 * 1.5) / 5)
    assert torch.count_nonzero(worker.model.grad) == 0


@pytest.mark.parametrize("method", ["pgfed", "pgfedmo"])
def test_extra_payloads_are_counted_in_bytes(tiny, tmp_path, method):
    cfg = tiny({"schedule": {"rounds": 3, "clients_per_round": 5}, "eval": {"personalized": True}})
    base = fedweave.run(cfg, out=tmp_path / "fedavg")
    res = fedweave.run(tiny({**cfg, "method": {"name": method}}), out=tmp_path / method)
    p, k, rounds, f = base.summary["num_params"], 5, 3, 4  # float32
    # uplink: g_i (P floats) + ℓ⁻_i (a scalar) every round, a_i (K floats) from round 2
    assert res.summary["bytes_up"] - base.summary["bytes_up"] == rounds * k * (p * f + 8) + (rounds - 1) * k * k * f
    # downlink from round 2: c_i and ḡ (P floats each), μℓ⁻ and a_i (K floats each)
    assert res.summary["bytes_down"] - base.summary["bytes_down"] == (rounds - 1) * k * (2 * p * f + 2 * k * f)
    assert res.status == "completed" and 0 <= res.summary["personalized_acc_mean"] <= 1
