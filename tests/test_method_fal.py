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
