"""Executors give the same numbers: serial (reference), vectorized (float tolerance), Ray (bit for bit)."""

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import _execute, build_experiment
from fedweave.rundir import RunDirectory

BASE = [
    "data.partition.num_clients=8", "schedule.clients_per_round=4", "schedule.rounds=3", "eval.every=3",
    "model.hidden=[16]", "client.epochs=2", "client.batch_size=16",
]


def _run_capturing(tmp_path, name, overrides):
    """Run and record every round's updates as the strategy receives them."""
    cfg = load_config(None, BASE + overrides)
    exp = build_experiment(cfg)
    rounds = []

    def capture(updates, state, round_, ctx):
        rounds.append({u.client_id: (u.delta.clone(), u.num_steps, u.metrics["loss"]) for u in updates})
        return updates

    exp.cohort_hooks.append(capture)
    run_dir = RunDirectory(tmp_path / name)
    run_dir.create(cfg.to_yaml())
    result = _execute(exp, run_dir, None, None)
    return rounds, result


@pytest.mark.parametrize("extra", [
    [],
    ["client.momentum=0.9", "client.weight_decay=0.001", "client.grad_clip=1.0"],
    ["method.name=fedprox", "client.mu=0.5", "client.local_steps=7"],
])
def test_vectorized_updates_match_serial_every_round(tmp_path, extra):
    serial, rs = _run_capturing(tmp_path, "s", extra)
    vec, rv = _run_capturing(tmp_path, "v", extra + ["executor.kind=vectorized"])
    assert len(serial) == len(vec) == 3
    for a, b in zip(serial, vec):
        assert a.keys() == b.keys()
        for cid in a:
            da, steps_a, loss_a = a[cid]
            db, steps_b, loss_b = b[cid]
            assert steps_a == steps_b
            assert torch.allclose(da, db, atol=1e-5, rtol=1e-4), (cid, (da - db).abs().max())
            assert loss_a == pytest.approx(loss_b, rel=1e-4, abs=1e-5)
    assert rs.summary["final_accuracy"] == pytest.approx(rv.summary["final_accuracy"], abs=0.02)


def test_vectorized_refuses_unsupported_with_reason(tmp_path):
    with pytest.raises(ConfigError, match="SCAFFOLD|ScaffoldClient|customises"):
        fedweave.run(None, out=tmp_path / "x", overrides=BASE + ["executor.kind=vectorized", "method.name=scaffold"])
    with pytest.raises(ConfigError, match="buffers"):
        fedweave.run(None, out=tmp_path / "y", overrides=BASE + ["executor.kind=vectorized", "model.name=resnet", "model.norm=batch"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_auto_falls_back_to_serial_and_matches(tmp_path):
    a = fedweave.run(None, out=tmp_path / "a", overrides=BASE + ["method.name=scaffold"])
    b = fedweave.run(None, out=tmp_path / "b", overrides=BASE + ["method.name=scaffold", "executor.kind=auto"])
    assert torch.equal(a.params, b.params)


def test_vectorized_padding_efficiency_reported(tmp_path):
    from fedweave.sim.vectorized import VectorizedExecutor

    cfg = load_config(None, BASE + ["executor.kind=vectorized"])
    exp = build_experiment(cfg)
    run_dir = RunDirectory(tmp_path / "p")
    run_dir.create(cfg.to_yaml())
    _execute(exp, run_dir, None, None)
    assert isinstance(exp.executor, VectorizedExecutor)
    eff = exp.executor.padding_efficiency
    assert 0.3 < eff <= 1.0


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("mode", [[], ["schedule.mode=buffered", "system.profile=tiers", "schedule.concurrency=3"]])
def test_ray_equals_serial_bit_for_bit(tmp_path, ray_runtime, mode):
    a = fedweave.run(None, out=tmp_path / "serial", overrides=BASE + mode)
    b = fedweave.run(None, out=tmp_path / "ray", overrides=BASE + mode + ["executor.kind=ray", "executor.num_workers=2"])
    assert torch.equal(a.params, b.params)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def test_ray_stateful_method_equals_serial(tmp_path, ray_runtime):
    a = fedweave.run(None, out=tmp_path / "s", overrides=BASE + ["method.name=scaffold"])
    b = fedweave.run(None, out=tmp_path / "r", overrides=BASE + ["method.name=scaffold", "executor.kind=ray"])
    assert torch.equal(a.params, b.params)
