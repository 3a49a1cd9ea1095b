"""Personalization across methods: roles declared by methods, personalized evaluation,
the global model's evaluation after it, and resume with personal client state."""

from __future__ import annotations

import json

import pytest
import torch

import fedweave
import problems  # tests/problems.py
from fedweave.config import load_config
from fedweave.methods.registry import method_roles
from fedweave.models import build_model

PERSONAL = ["ditto", "fedper", "fedrep", "fedbn", "pgfed", "pgfedmo", "fsar"]


def _norm_model(method):
    return {"name": "mlp_norm", "norm": "batch", "hidden": [16]} if method == "fedbn" else {"hidden": [16]}


def test_method_roles_come_after_the_configs():
    module = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    cfg = load_config({"method": {"name": "fedper"}, "model": {"roles": {"1.*": "frozen"}}})
    assert method_roles(cfg, module) == {"1.*": "frozen", "3.*": "personal"}
    assert method_roles(load_config({"model": {"roles": {"1.*": "frozen"}}}), module) == {"1.*": "frozen"}


@pytest.mark.parametrize("method", PERSONAL)
def test_every_method_runs_with_personalized_evaluation(tiny, tmp_path, method):
    cfg = tiny({"method": {"name": method}, "model": _norm_model(method), "eval": {"personalized": True},
                "schedule": {"rounds": 2, "clients_per_round": 3}})
    res = fedweave.run(cfg, out=tmp_path / method)
    assert res.status == "completed"
    rec = res.history[-1]
    assert 0 <= rec["personalized_acc_worst10"] <= rec["personalized_acc_mean"] <= 1
    assert rec["personalized_acc_std"] >= 0


@pytest.mark.parametrize("method", ["fedper", "fedbn"])
def test_personalized_evaluation_leaves_the_global_model_alone(tiny, tmp_path, method):
    """The global model is evaluated with the initial personal parts, whether or not the
    personalized evaluation loaded clients' parts into the evaluation model before."""
    cfg = tiny({"method": {"name": method}, "model": _norm_model(method), "schedule": {"rounds": 3}})
    plain = fedweave.run(cfg, out=tmp_path / "plain")
    pers = fedweave.run(tiny({**cfg, "eval": {"personalized": True}}), out=tmp_path / "pers")
    assert [r["accuracy"] for r in plain.history] == [r["accuracy"] for r in pers.history]


@pytest.mark.parametrize("method", ["pgfedmo", "ditto"])
def test_resume_with_personal_state_equals_uninterrupted(tiny, tmp_path, method):
    cfg = tiny({"method": {"name": method}, "schedule": {"rounds": 4}, "eval": {"personalized": True}})
    ref = fedweave.run(cfg, out=tmp_path / "ref")

    def stop(done, total, record):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=tmp_path / "int", progress=stop)
    res = fedweave.resume(tmp_path / "int")
    lines = lambda p: [{k: v for k, v in json.loads(x).items() if k != "wall_time_s"}  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(tmp_path / "int") == lines(ref.run_dir)
    assert torch.equal(res.params, ref.params)


# -- personalization must help on a problem built for it ----------------------------------------------


def _problem_run(tmp_path, make, method, model, rounds=10):
    tmp_path.mkdir(parents=True, exist_ok=True)
    root = make(tmp_path / "data.npz")
    cfg = {"data": {"dataset": "npz", "root": root, "client_val_fraction": 0.2, "partition": {"kind": "natural", "num_clients": 4}},
           "model": model, "method": {"name": method}, "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
           "schedule": {"rounds": rounds, "clients_per_round": 4}, "eval": {"every": rounds, "personalized": True}}
    res = fedweave.run(cfg, out=tmp_path / method)
    exp_val = sum(len(v) for v in fedweave.build_experiment(load_config(cfg)).data.client_val)
    return res.history[-1], exp_val


def _bound_plus_4_sd(bound, n):
    """A single model's accuracy on n validation examples exceeds its population bound by
    more than 4 binomial standard deviations with probability < 4e-5."""
    return bound + 4 * (bound * (1 - bound) / n) ** 0.5


@pytest.mark.parametrize("method,make,model,bound", [
    ("fedper", "flipped_labels", {"name": "mlp", "hidden": [16]}, 0.5),
    ("fedbn", "shifted_features", {"name": "mlp_norm", "norm": "batch", "hidden": [16]}, 0.839),
])
def test_personalized_models_beat_any_single_model(tmp_path, method, make, model, bound):
    """On the problems of tests/problems.py no single model exceeds ``bound`` (derived
    there); FedPer's personal head undoes a label flip, FedBN's personal BatchNorm undoes a
    feature shift. Their personalized accuracy must clear the bound by 4 sd and the global
    model's accuracy; FedAvg, whose 'personal' model is the global one, must not."""
    make_fn = getattr(problems, make)
    rec, n_val = _problem_run(tmp_path / method, make_fn, method, model)
    assert rec["personalized_acc_mean"] > _bound_plus_4_sd(bound, n_val)
    assert rec["personalized_acc_mean"] > rec["accuracy"]
    plain, _ = _problem_run(tmp_path / "fedavg", make_fn, "fedavg", model)
    assert plain["personalized_acc_mean"] <= _bound_plus_4_sd(bound, n_val)
