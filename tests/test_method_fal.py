"""FAL: clients train on PGD adversarial examples; FedAvg with a global learning rate."""

from __future__ import annotations

import torch

import fedweave
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


def test_fal_run_reports_clean_and_robust_accuracy(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "fal", "steps": 2, "server_lr": 0.5},
                             "eval": {"robust_accuracy": True, "robust_steps": 2, "robust_max_examples": 100}}),
                       out=tmp_path / "fal")
    rec = res.history[-1]
    assert 0 <= rec["robust_accuracy"] <= 1 and 0 <= rec["accuracy"] <= 1
