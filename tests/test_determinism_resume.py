"""Determinism (same config + seed ⇒ same numbers) and interrupt / resume."""

from __future__ import annotations

import json

import pytest
import torch

import fedweave
from fedweave import ConfigError, build_experiment, load_config
from fedweave.methods.base import ClientAlgorithm
from fedweave.sim.ledger import RoundLedger


def metrics(run_dir):
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in lines if line.strip()]


def summary(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    s.pop("wall_time_s")
    return s


def stop_after(round_no):
    """A progress callback that interrupts the run once ``round_no`` rounds are done."""

    def progress(done, total, record):
        if done == round_no:
            raise KeyboardInterrupt

    return progress


# -- determinism ----------------------------------------------------------------------------------


def test_same_config_and_seed_give_identical_metrics(tiny, tmp_path):
    cfg = tiny({"schedule": {"rounds": 4}, "eval": {"per_client": True}})
    a = fedweave.run(cfg, out=tmp_path / "a")
    b = fedweave.run(cfg, out=tmp_path / "b")
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert summary(tmp_path / "a") == summary(tmp_path / "b")
    assert torch.equal(a.params, b.params)


def test_same_seed_identical_for_stateful_and_momentum_methods(tiny, tmp_path):
    for method in ("scaffold", "fedadam"):
        cfg = tiny({"method": {"name": method}, "client": {"momentum": 0.5}})
        a = fedweave.run(cfg, out=tmp_path / f"{method}-a")
        b = fedweave.run(cfg, out=tmp_path / f"{method}-b")
        assert metrics(a.run_dir) == metrics(b.run_dir)
        assert torch.equal(a.params, b.params)


def test_different_seed_changes_numbers_but_not_the_data(tiny, tmp_path):
    a_cfg, b_cfg = tiny({"seed": 0}), tiny({"seed": 1})
    a = fedweave.run(a_cfg, out=tmp_path / "a")
    b = fedweave.run(b_cfg, out=tmp_path / "b")
    assert not torch.equal(a.params, b.params)
    assert [r["loss"] for r in a.history] != [r["loss"] for r in b.history]
    ea, eb = build_experiment(load_config(a_cfg)), build_experiment(load_config(b_cfg))
    assert not torch.equal(ea.initial_params, eb.initial_params)  # initialisation follows `seed`
    for x, y in zip(ea.data.client_train, eb.data.client_train):
        assert torch.equal(x, y)
    for x, y in zip(ea.data.client_val, eb.data.client_val):
        assert torch.equal(x, y)
    assert torch.equal(ea.data.y_test, eb.data.y_test)


def test_data_seed_changes_the_partition(tiny):
    ea = build_experiment(load_config(tiny({"data": {"seed": 0}})))
    eb = build_experiment(load_config(tiny({"data": {"seed": 1}})))
    assert any(len(x) != len(y) or not torch.equal(x, y) for x, y in zip(ea.data.client_train, eb.data.client_train))
    assert torch.equal(ea.initial_params, eb.initial_params)  # same training seed, same init


# -- resume -----------------------------------------------------------------------------------------


def resume_cfg(tiny, **extra):
    return tiny({"schedule": {"rounds": 6}, "output": {"checkpoint_every": 2}, **extra})


def assert_same_as(reference_dir, run_dir):
    assert metrics(run_dir) == metrics(reference_dir)
    assert summary(run_dir) == summary(reference_dir)


def test_resume_after_interrupt_equals_uninterrupted_run(tiny, tmp_path):
    cfg = resume_cfg(tiny)
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out, progress=stop_after(5))
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "interrupted"
    assert s["rounds_completed"] == 5
    assert (out / "checkpoint.pt").exists()
    assert len(metrics(out)) == 5
    res = fedweave.resume(out)
    assert res.summary["status"] == "completed"
    assert_same_as(ref.run_dir, out)
    assert torch.equal(res.params, ref.params)


def test_resume_from_periodic_checkpoint_after_a_crash(tiny, tmp_path):
    """A hard crash after round 5: the summary was never written and metrics.jsonl has a
    line beyond the last periodic checkpoint (round 4)."""
    cfg = resume_cfg(tiny)
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "crash"

    class Crash(BaseException):
        pass

    def progress(done, total, record):
        if done == 5:
            raise Crash

    with pytest.raises(Crash):
        fedweave.run(cfg, out=out, progress=progress)
    assert not (out / "summary.json").exists()
    assert len(metrics(out)) == 5
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["round"] == 4
    fedweave.resume(out)
    assert_same_as(ref.run_dir, out)


def test_resume_when_interrupted_in_the_first_round(tiny, tmp_path, monkeypatch):
    cfg = resume_cfg(tiny)
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "early"
    orig = ClientAlgorithm.train
    calls = {"n": 0}

    def interrupt_second_job(self, job, worker, generator):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(self, job, worker, generator)

    monkeypatch.setattr(ClientAlgorithm, "train", interrupt_second_job)
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out)
    monkeypatch.setattr(ClientAlgorithm, "train", orig)
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 0
    assert metrics(out) == []
    fedweave.resume(out)
    assert_same_as(ref.run_dir, out)


def test_resume_without_any_checkpoint_restarts(tiny, tmp_path):
    cfg = resume_cfg(tiny)
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "nockpt"
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out, progress=stop_after(1))
    (out / "checkpoint.pt").unlink()  # as if the process died before any checkpoint
    (out / "summary.json").unlink()
    assert len(metrics(out)) == 1
    fedweave.resume(out)
    assert_same_as(ref.run_dir, out)


def test_resume_scaffold_restores_client_state(tiny, tmp_path):
    cfg = resume_cfg(tiny, method={"name": "scaffold"})
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out, progress=stop_after(3))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    states = ckpt["client_states"]
    assert states and all("c_i" in st for st in states.values())
    res = fedweave.resume(out)
    assert_same_as(ref.run_dir, out)
    assert torch.equal(res.params, ref.params)


def test_resume_fedadam_restores_server_optimizer_state(tiny, tmp_path):
    cfg = resume_cfg(tiny, method={"name": "fedadam"})
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out, progress=stop_after(3))
    fedweave.resume(out)
    assert_same_as(ref.run_dir, out)


def test_resume_twice(tiny, tmp_path):
    cfg = resume_cfg(tiny)
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "twice"
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out, progress=stop_after(2))
    with pytest.raises(KeyboardInterrupt):
        fedweave.resume(out, progress=stop_after(4))
    fedweave.resume(out)
    assert_same_as(ref.run_dir, out)


def test_interrupt_during_evaluation_resumes_exactly(tiny, tmp_path, monkeypatch):
    cfg = resume_cfg(tiny)
    ref = fedweave.run(cfg, out=tmp_path / "ref")
    out = tmp_path / "mid"
    orig = RoundLedger.evaluate
    fired = {"done": False}

    def evaluate(self, state, round_, *args, **kwargs):
        if round_ == 5 and not fired["done"]:
            fired["done"] = True
            raise KeyboardInterrupt
        return orig(self, state, round_, *args, **kwargs)

    monkeypatch.setattr(RoundLedger, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=out)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["round"] == 4
    fedweave.resume(out)
    assert_same_as(ref.run_dir, out)


def test_resuming_a_completed_run_raises(tiny, tmp_path):
    out = tmp_path / "done"
    fedweave.run(tiny(), out=out)
    with pytest.raises(ConfigError, match="already completed"):
        fedweave.resume(out)


def test_resuming_a_non_run_directory_raises(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        fedweave.resume(tmp_path)
