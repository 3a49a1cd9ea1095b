"""FAL: clients train on PGD adversarial examples; FedAvg with a global learning rate."""

from __future__ import annotations

import torch

import fedweave
import problems  # tests/problems.py
from fedweave.config import load_config
from fedweave.experiment import build_experiment
from fedweave.methods.fal import FALClient


def test_fal_loss_is_the_loss_on_adversarial_examples(tiny):
    exp = build_experiment(load_config(tiny({"method": {"name": "fal", "eps": 0.2, "steps": 3}})))
    assert isinstance(exp.algorithm, FALClient)
    from fedweave.sim.worker import Worker

    worker = Worker(exp.worker_setup())
    module = worker.model.module
    x, y = exp.data.x[:64], exp.data.y[:64]
    torch.manual_seed(0)
    adv_loss = exp.algorithm.loss_fn(None, worker)(module, x, y)
    clean = exp.task.loss(module(x), y)
    assert adv_loss > clean
    assert exp.strategy.server_opt.lr == 1.0  # global learning rate, default 1


def test_fal_is_robust_where_plain_training_is_not(tmp_path):
    """On tests/problems.py's robust-and-brittle-features problem a linear model trained
    plainly leans on the brittle features, which an L∞ attack of radius 0.3 turns against
    the label; FAL's adversarial training at the same radius must rely on the robust one.
    Robust accuracy is measured on the whole test split, the same examples as the clean
    accuracy, so it cannot exceed it (PGD only raises the true label's loss); FAL's must
    exceed the undefended model's by 4 sd of an accuracy on n test examples."""
    root = problems.robust_and_brittle_features(tmp_path / "data.npz")
    results = {}
    for name, extra in (("fedavg", {}), ("fal", {"eps": 0.3, "steps": 3})):
        cfg = {"data": {"dataset": "npz", "root": root, "partition": {"kind": "natural", "num_clients": 4}},
               "model": {"name": "logistic"}, "method": {"name": name, **extra},
               "client": {"epochs": 1, "batch_size": 32, "lr": 0.1}, "schedule": {"rounds": 10, "clients_per_round": 4},
               "eval": {"every": 10, "robust_accuracy": True, "robust_eps": 0.3, "robust_steps": 5, "robust_max_examples": None}}
        results[name] = fedweave.run(cfg, out=tmp_path / name).history[-1]
    n_test = len(build_experiment(load_config(cfg)).data.y_test)
    fal, plain = results["fal"], results["fedavg"]
    assert fal["robust_accuracy"] <= fal["accuracy"]
    assert plain["robust_accuracy"] <= plain["accuracy"]
    assert fal["robust_accuracy"] > plain["robust_accuracy"] + 4 * 0.5 / n_test**0.5


def test_adversarial_examples_are_regenerated_with_the_current_weights_at_every_step(tiny, monkeypatch):
    """Each local step crafts its PGD batch from the model as it is at that step: the weights
    seen by the k-th PGD call are the weights after k SGD steps on the earlier adversarial
    batches (recomputed here by hand), so no step reuses stale examples or weights."""
    import fedweave.methods.fal as fal
    from fedweave.messages import Broadcast
    from fedweave.methods.base import ClientJob
    from fedweave.sim.worker import Worker

    cfg = tiny({"method": {"name": "fal", "eps": 0.2, "steps": 2},
                "client": {"local_steps": 4, "lr": 0.5, "batch_size": 16, "optimizer": "sgd", "momentum": 0.0}})
    exp = build_experiment(load_config(cfg))
    worker = Worker(exp.worker_setup())
    calls = []
    real = fal.pgd_attack

    def spy(module, x, y, *args, **kwargs):
        weights = [p.detach().clone() for p in module.parameters()]
        adv = real(module, x, y, *args, **kwargs)
        calls.append((weights, adv.clone(), y.clone()))
        return adv

    monkeypatch.setattr(fal, "pgd_attack", spy)
    job = ClientJob(0, 0, 0, Broadcast(0, exp.initial_params, exp.initial_buffers), None, exp.train_settings(0.5))
    out = worker.run(job)
    assert len(calls) == 4 == out.update.num_steps  # one fresh PGD batch per local step

    # replay: w_{k+1} = w_k − lr ∇ CE(f_{w_k}(adv_k), y_k), starting from the broadcast model
    model = exp.model_factory()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(exp.initial_params.clone(), model.parameters())
    for k, (weights, adv, y) in enumerate(calls):
        for p, w in zip(model.parameters(), weights):
            assert torch.allclose(p, w, atol=1e-6), f"PGD call {k} did not see the current weights"
        loss = torch.nn.functional.cross_entropy(model(adv), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.5 * g
    assert not all(torch.equal(a, b) for a, b in zip(calls[0][0], calls[-1][0]))  # the weights did move
