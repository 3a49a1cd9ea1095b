"""Evaluation figures recomputed outside the engine: the global model's accuracy and loss on
the test split, and personalized accuracy from each client's own model (loaded through the
method's ``personalize``) on that client's validation split.

The expected values are computed here from the run's final model, the client states of its
checkpoint and the data splits — with plain torch, not with the engine's evaluation code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fedweave
from fedweave.config import load_config
from fedweave.experiment import build_experiment
from fedweave.params import FlatModel
from helpers_eval import each_clients_own_model, run_keeping_the_final_checkpoint


def _fresh_model(exp) -> FlatModel:
    """The experiment's model with its seeded initial weights, as a flat model."""
    return FlatModel(exp.model_factory(), exp.roles)


@torch.no_grad()
def _accuracy_and_loss(module, x, y) -> tuple[float, float]:
    module.eval()
    logits = module(x)
    return float((logits.argmax(dim=1) == y).double().mean()), float(F.cross_entropy(logits.double(), y))


@pytest.mark.parametrize("model", [{"hidden": [16]}, {"name": "mlp_norm", "norm": "batch", "hidden": [16]}])
def test_global_accuracy_and_loss_are_those_of_the_final_model_on_the_test_split(tiny, tmp_path, model):
    cfg = tiny({"model": model, "schedule": {"rounds": 3}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    exp = build_experiment(load_config(cfg))
    flat = _fresh_model(exp)
    with torch.no_grad():
        flat.params.copy_(res.params)
        flat.buffers.copy_(res.buffers)  # BatchNorm statistics, where the model has them
    acc, loss = _accuracy_and_loss(flat.module, exp.data.x_test, exp.data.y_test)
    last = res.history[-1]
    assert last["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert last["loss"] == pytest.approx(loss, rel=1e-5)
    # the same model scores differently on the clients' training data: the figure is not that
    train = torch.cat(exp.data.client_train)
    assert _accuracy_and_loss(flat.module, exp.data.x[train], exp.data.y[train])[1] != pytest.approx(loss, rel=1e-5)


PERSONAL = {
    "fedper": {"hidden": [16]},  # a personal head in the client state
    "ditto": {"hidden": [16]},  # a whole separate personal model v_k
    "fedbn": {"name": "mlp_norm", "norm": "batch", "hidden": [16]},  # personal BatchNorm layers
}


@pytest.mark.parametrize("method", sorted(PERSONAL))
def test_personalized_accuracy_is_each_clients_own_model_on_its_validation_split(tiny, tmp_path, method):
    cfg = tiny({"method": {"name": method}, "model": PERSONAL[method], "eval": {"personalized": True},
                "schedule": {"rounds": 3, "clients_per_round": 3}})
    last, server, states = run_keeping_the_final_checkpoint(cfg, tmp_path / "r")
    assert last["round"] == 3 and states  # the final round; some clients trained and kept a state
    exp = build_experiment(load_config(cfg))
    scores = np.array([_accuracy_and_loss(module, exp.data.x[val], exp.data.y[val])[0]
                       for _, val, module in each_clients_own_model(exp, last, server, states)])
    worst = np.sort(scores)[: max(1, math.ceil(0.1 * len(scores)))]  # the worst 10% of clients
    assert last["personalized_acc_mean"] == pytest.approx(scores.mean(), abs=1e-12)
    assert last["personalized_acc_std"] == pytest.approx(scores.std(), abs=1e-12)
    assert last["personalized_acc_worst10"] == pytest.approx(worst.mean(), abs=1e-12)
