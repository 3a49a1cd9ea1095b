"""The uplink eavesdropper: what it intercepts and the model it keeps."""

from __future__ import annotations

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.threats.eavesdropper import Eavesdropper




def _run_with_spy(tiny, tmp_path, extra):
    """Run and record (server params, eavesdropper params) after every round."""
    from fedweave.experiment import _execute
    from fedweave.rundir import RunDirectory
    from fedweave.sim.engine import Observer

    cfg = load_config(tiny(extra))
    exp = build_experiment(cfg)
    eaves = next(o for o in exp.observers if isinstance(o, Eavesdropper))
    trace = []

    class Spy(Observer):
        def on_round_end(self, state, round_):
            trace.append((state.params.clone(), eaves.params.clone()))

    exp.observers.append(Spy())
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.create(cfg.to_yaml())
    res = _execute(exp, run_dir, None, None)
    return res, eaves, trace


def test_full_interception_of_full_models_reproduces_fedavg(tiny, tmp_path):
    res, eaves, trace = _run_with_spy(tiny, tmp_path, {"eavesdropper": {"probability": 1.0}, "schedule": {"rounds": 3}})
    assert len(trace) == 3
    for server, spy in trace:
        assert torch.allclose(server, spy, atol=1e-6)
    assert eaves.intercepted == res.summary["client_updates"]
    assert res.summary["final_eavesdropper_accuracy"] == pytest.approx(res.summary["final_accuracy"], abs=1e-9)


def test_partial_interception_is_seeded_and_counted(tiny, tmp_path):
    a = fedweave.run(tiny({"eavesdropper": {"probability": 0.5}, "schedule": {"rounds": 4}}), out=tmp_path / "a")
    b = fedweave.run(tiny({"eavesdropper": {"probability": 0.5}, "schedule": {"rounds": 4}}), out=tmp_path / "b")
    n = a.summary["eavesdropper_intercepted"]
    assert 0 < n < a.summary["client_updates"]
    assert n == b.summary["eavesdropper_intercepted"]
    assert a.summary["final_eavesdropper_accuracy"] == b.summary["final_eavesdropper_accuracy"]
    assert all("eavesdropper_accuracy" in r for r in a.history)


def test_deltas_mode_with_full_interception_tracks_the_sum_of_mean_updates(tiny, tmp_path):
    res, eaves, trace = _run_with_spy(tiny, tmp_path, {"eavesdropper": {"probability": 1.0, "sees": "deltas"}})
    exp = build_experiment(load_config(tiny({"eavesdropper": {"probability": 1.0, "sees": "deltas"}})))
    own_init = next(o for o in exp.observers if isinstance(o, Eavesdropper)).params
    # its model = its own init + (server model - server init): FedAvg's updates, applied elsewhere
    for server, spy in trace:
        assert torch.allclose(spy - own_init, server - exp.initial_params, atol=1e-5)
    assert not torch.allclose(own_init, exp.initial_params)


def test_deltas_mode_from_the_servers_initial_weights_equals_the_server_round_by_round(tiny, tmp_path):
    extra = {"eavesdropper": {"probability": 1.0, "sees": "deltas", "init": "server"}, "schedule": {"rounds": 3}}
    res, eaves, trace = _run_with_spy(tiny, tmp_path, extra)
    assert len(trace) == 3
    # FedAvg: w_g ← w_g + Σ n_k Δ_k / Σ n_k; the eavesdropper applies the same mean to the same start
    for server, spy in trace:
        assert torch.allclose(server, spy, atol=1e-6)
    assert res.summary["final_eavesdropper_accuracy"] == pytest.approx(res.summary["final_accuracy"], abs=1e-9)
    with pytest.raises(ConfigError, match="init"):
        build_experiment(load_config(tiny({"eavesdropper": {"probability": 1.0, "init": "server"}})))


def test_eavesdropper_refuses_frl(tiny):
    with pytest.raises(ConfigError, match="rankings"):
        build_experiment(load_config(tiny({"method": {"name": "frl"}, "eavesdropper": {"probability": 0.5}})))
