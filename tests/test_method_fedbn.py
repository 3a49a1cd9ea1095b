"""FedBN: normalisation layers (weights, biases, running statistics) stay on the clients; a
model without normalisation is refused at config time with the reason."""

from __future__ import annotations

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.rundir import RunDirectory
from fedweave.sim.engine import Simulator
from fedweave.sim.executors import make_executor


def test_batchnorm_layers_are_personal(tiny, tmp_path):
    cfg = load_config(tiny({"method": {"name": "fedbn"}, "model": {"name": "mlp_norm", "norm": "batch", "hidden": [16]},
                            "schedule": {"rounds": 2, "clients_per_round": 5}, "eval": {"personalized": True}}))
    exp = build_experiment(cfg)
    spec = exp.spec
    assert [s.name for s in spec.group("personal")] == ["2.weight", "2.bias"]
    assert [s.name for s in spec.group("personal_buffer")] == ["2.running_mean", "2.running_var"]
    assert spec.num_buffers == 0  # no shared statistics left to average
    run_dir = RunDirectory(tmp_path)
    run_dir.create(cfg.to_yaml())
    exp.executor = make_executor("serial")
    exp.executor.start(exp.worker_setup())
    sim = Simulator(exp, run_dir)
    sim.run()
    states = [sim.store.get(c) for c in range(5)]
    means = [s["personal_buffers"][:16] for s in states]
    assert all(not torch.equal(means[0], m) for m in means[1:])  # each client's own statistics
    assert all(not torch.equal(states[0]["personal"], s["personal"]) for s in states[1:])
    assert sim.committed.state.params.numel() == spec.num_params
    assert sim.committed.history[-1]["personalized_acc_mean"] > 0.1  # above chance (10 classes); the
    # personalized figure itself is recomputed in test_evaluation.py and must beat a bound in test_personalization.py


def test_groupnorm_and_resnet_layers_are_found(tiny):
    exp = build_experiment(load_config(tiny({"method": {"name": "fedbn"},
                                             "model": {"name": "mlp_norm", "norm": "group", "hidden": [16]}})))
    assert [s.name for s in exp.spec.group("personal")] == ["2.weight", "2.bias"]
    exp = build_experiment(load_config(tiny({"method": {"name": "fedbn"}, "model": {"name": "resnet", "width": 4}})))
    names = {s.name.rsplit(".", 1)[0] for s in exp.spec.group("personal")}
    assert "stem.1" in names and "stages.1.shortcut.1" in names and "fc" not in names


@pytest.mark.parametrize("model, hint", [({"name": "mlp"}, "mlp_norm"), ({"name": "mlp_norm", "norm": "none"}, "model.norm=batch")])
def test_model_without_normalisation_is_refused_with_the_reason(tiny, tmp_path, model, hint):
    with pytest.raises(ConfigError, match="normalisation layers local.*has none") as info:
        fedweave.run(tiny({"method": {"name": "fedbn"}, "model": {**model, "hidden": [16]}}), out=tmp_path / "run")
    assert hint in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory is created
