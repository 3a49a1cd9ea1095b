"""Ditto: the personal model v_k follows (λ/2)‖v − w‖², lives in the client state and is what
personalized evaluation loads; λ → ∞ gives the global model, λ = 0 local training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.data.federated import build_federated
from fedweave.messages import Broadcast
from fedweave.methods.base import ClientJob
from fedweave.methods.ditto import DittoClient, ditto_hook
from fedweave.models import build_model
from fedweave.params import FlatModel
from fedweave.tasks import make_task
from fedweave.train import TrainSettings

SETTINGS = TrainSettings(epochs=2, batch_size=16, lr=0.1)


@pytest.fixture(scope="module")
def worker():
    data = build_federated(load_config({"data": {"partition": {"num_clients": 5}}}).data)
    torch.manual_seed(0)
    model = FlatModel(build_model("mlp", data.input_shape, data.num_classes, hidden=[16]))
    return SimpleNamespace(model=model, task=make_task("classification"), data=data)


def personal_model(worker, lam, state=None):
    torch.manual_seed(1)
    w = torch.randn_like(worker.model.params) * 0.1
    worker.model.params.copy_(w)  # what the worker does before train()
    job = ClientJob(0, 0, 0, Broadcast(0, w, worker.model.buffers.clone()), state, SETTINGS)
    out = DittoClient(lam).train(job, worker, torch.Generator().manual_seed(0))
    return w, out


def test_update_is_the_global_solvers_and_v_is_kept_in_state(worker):
    w, out = personal_model(worker, 0.1)
    v = out.state["v"]
    assert not torch.equal(v, w) and not torch.allclose(out.update.delta, torch.zeros_like(w))
    # the uploaded update is plain local training from w (FedAvg's), not v − w
    assert not torch.allclose(out.update.delta, v - w)


def test_lambda_to_infinity_gives_the_global_model(worker):
    dist = {lam: float((personal_model(worker, lam)[1].state["v"] - personal_model(worker, lam)[0]).norm())
            for lam in (0.0, 1.0, 100.0, 1e12)}
    assert dist[0.0] > dist[1.0] > dist[100.0] > dist[1e12]
    assert dist[1e12] < 1e-6  # v = w^t


def test_personal_model_continues_from_the_state(worker):
    w, first = personal_model(worker, 0.1)
    _, second = personal_model(worker, 0.1, state=first.state)
    assert not torch.allclose(second.state["v"], first.state["v"])
    assert (second.state["v"] - first.state["v"]).norm() < (first.state["v"] - w).norm() * 2


def test_personalize_loads_v(worker):
    w, out = personal_model(worker, 0.1)
    b = Broadcast(3, torch.zeros_like(w), worker.model.buffers.clone())
    initial = {"personal": worker.model.personal.clone(), "personal_buffers": worker.model.personal_buffers.clone()}
    DittoClient(0.1).personalize(worker.model, b, out.state, initial)
    assert torch.equal(worker.model.params, out.state["v"])
    DittoClient(0.1).personalize(worker.model, b, None, initial)  # never trained: the global model
    assert torch.equal(worker.model.params, b.params)


def test_hook_is_the_proximal_step_for_sgd():
    g, v, w, lr, lam = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 0.1, 3.0
    grad = g.clone()
    ditto_hook(w, lam, lr)(grad, v)
    assert torch.allclose(v - lr * grad, (v - lr * g + lr * lam * w) / (1 + lr * lam))


def test_ditto_run_with_huge_lambda_scores_the_global_model(tiny, tmp_path):
    """Every client trains every round, so with λ → ∞ each v_k is the global model at the start
    of the last round: Ditto's personalized score after 3 rounds is FedAvg's after 2."""
    cfg = tiny({"schedule": {"rounds": 3, "clients_per_round": 5}, "eval": {"personalized": True}})
    base = fedweave.run(tiny({**cfg, "schedule": {"rounds": 2, "clients_per_round": 5}}), out=tmp_path / "fedavg")
    huge = fedweave.run(tiny({**cfg, "method": {"name": "ditto", "lam": 1e12}}), out=tmp_path / "ditto")
    assert huge.summary["personalized_acc_mean"] == base.summary["personalized_acc_mean"]
    assert huge.history[1]["accuracy"] == base.history[1]["accuracy"]  # the global model is FedAvg's
    assert huge.summary["bytes_up"] == 1.5 * base.summary["bytes_up"]  # nothing extra travels
