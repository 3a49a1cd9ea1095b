"""FedPer: the personal head stays on the clients; the server aggregates the shared body only."""

from __future__ import annotations

import pytest
import torch

from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.rundir import RunDirectory
from fedweave.sim.engine import Simulator
from fedweave.sim.executors import make_executor


def simulate(cfg: dict, path):
    """Run like fedweave.run, and return the experiment and the simulator (its client-state store)."""
    config = load_config(cfg)
    exp = build_experiment(config)
    run_dir = RunDirectory(path)
    run_dir.create(config.to_yaml())
    exp.executor = make_executor("serial")
    exp.executor.start(exp.worker_setup())
    sim = Simulator(exp, run_dir)
    sim.run()
    exp.executor.close()
    return exp, sim


def test_head_is_personal_and_server_state_has_only_shared_params(tiny, tmp_path):
    cfg = tiny({"method": {"name": "fedper"}, "schedule": {"rounds": 2, "clients_per_round": 5},
                "eval": {"personalized": True}})
    exp, sim = simulate(cfg, tmp_path)
    spec = exp.spec
    assert [s.name for s in spec.group("personal")] == ["3.weight", "3.bias"]  # mlp [16]: 0 Flatten, 1 Linear, 2 ReLU, 3 Linear
    assert spec.num_params == 64 * 16 + 16
    state = sim.committed.state
    assert state.params.numel() == spec.num_params  # the server never holds a head
    heads = [sim.store.get(cid)["personal"] for cid in range(5)]
    assert all(h.numel() == 16 * 10 + 10 for h in heads)
    assert all(not torch.equal(heads[0], h) for h in heads[1:])  # each client trained its own head
    # the evaluation model's head is still the initial one: personal segments never reach the server
    assert torch.equal(sim.eval_model.personal, sim.ledger.initial_personal["personal"])
    # bytes: the head never travels (down: P floats + version; up: P floats + 4 ids + loss)
    totals = sim.committed.totals
    assert totals.bytes_down == 2 * 5 * (spec.num_params * 4 + 8)
    assert totals.bytes_up == 2 * 5 * (spec.num_params * 4 + 8 * 5)


def test_head_patterns_and_errors(tiny, tmp_path):
    exp = build_experiment(load_config(tiny({"method": {"name": "fedper", "head": ["1.*", "3.*"]},
                                             "model": {"hidden": [16, 8]}})))
    assert [s.name for s in exp.spec.group("personal")] == ["1.weight", "1.bias", "3.weight", "3.bias"]
    with pytest.raises(ConfigError, match="matches no parameter"):
        build_experiment(load_config(tiny({"method": {"name": "fedper", "head": "fc.*"}})))
    with pytest.raises(ConfigError, match="nothing would be shared"):
        build_experiment(load_config(tiny({"method": {"name": "fedper", "head": "*"}})))
    # the config's model.roles come first
    exp = build_experiment(load_config(tiny({"method": {"name": "fedper"}, "model": {"roles": {"3.bias": "trainable"}}})))
    assert [s.name for s in exp.spec.group("personal")] == ["3.weight"]


def test_fedrep_head_epochs_then_body(tiny, tmp_path):
    cfg = tiny({"method": {"name": "fedrep", "head_epochs": 2}, "schedule": {"rounds": 2, "clients_per_round": 5},
                "eval": {"personalized": True}})
    exp, sim = simulate(cfg, tmp_path / "rep")
    assert [s.name for s in exp.spec.group("personal")] == ["3.weight", "3.bias"]
    heads = [sim.store.get(cid)["personal"] for cid in range(5)]
    assert all(not torch.equal(heads[0], h) for h in heads[1:])
    assert sim.committed.history[-1]["personalized_acc_mean"] > 0


def test_fedrep_phases_freeze_the_other_part(tiny):
    from types import SimpleNamespace

    from fedweave.messages import Broadcast
    from fedweave.methods.base import ClientJob
    from fedweave.methods.fedrep import FedRepClient
    from fedweave.params import FlatModel
    from fedweave.tasks import make_task
    from fedweave.train import TrainSettings

    exp = build_experiment(load_config(tiny({"method": {"name": "fedrep"}})))
    model = FlatModel(exp.model_factory(), exp.roles)
    worker = SimpleNamespace(model=model, task=make_task("classification"), data=exp.data)
    head0, body0 = model.personal.clone(), model.params.clone()
    # weight decay and momentum would move a part whose gradient is merely zeroed
    settings = TrainSettings(epochs=1, lr=0.1, weight_decay=0.1, momentum=0.9)
    job = ClientJob(0, 0, 0, Broadcast(0, body0, model.buffers.clone()), None, settings)
    out = FedRepClient(head_epochs=0).train(job, worker, torch.Generator().manual_seed(0))
    assert torch.equal(model.personal, head0)  # body epochs only: the head is frozen exactly
    assert not torch.equal(model.params, body0) and out.update.delta.numel() == body0.numel()
    model.params.copy_(body0)
    out = FedRepClient(head_epochs=2).train(job, worker, torch.Generator().manual_seed(0))
    assert not torch.equal(model.personal, head0)  # the head epochs moved the head
    assert out.examples_processed == 3 * len(exp.data.client_train[0])  # 2 head epochs + 1 body epoch
