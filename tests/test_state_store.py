"""The client-state store: memory budget, spilling to disk, snapshots and resume."""

import pytest
import torch

import fedweave
from fedweave.sim.state_store import ClientStateStore, SpilledState, state_bytes


def _state(v, n=1000):
    return {"c_i": torch.full((n,), float(v)), "count": v}


def test_budget_spills_least_recently_used_and_loads_back(tmp_path):
    one = state_bytes(_state(0))
    store = ClientStateStore(memory_budget_bytes=int(2.5 * one), spill_dir=tmp_path)
    for cid in range(5):
        store.put(cid, _state(cid))
    assert store.memory_bytes <= 2.5 * one
    assert store.spills == 3 and len(store) == 5
    assert store.get(4)["count"] == 4 and store.loads == 0  # recent: in memory
    got = store.get(0)
    assert store.loads == 1 and got["count"] == 0 and torch.equal(got["c_i"], torch.zeros(1000))
    assert store.get(99) is None


def test_snapshot_stays_valid_while_the_store_changes(tmp_path):
    one = state_bytes(_state(0))
    store = ClientStateStore(memory_budget_bytes=one, spill_dir=tmp_path)
    store.put(0, _state(1))
    store.put(1, _state(2))  # spills client 0
    snap = store.state_dict()
    assert isinstance(snap[0], SpilledState)
    store.put(0, _state(7))
    store.put(2, _state(3))
    store.collect_garbage(snap)
    restored = ClientStateStore(memory_budget_bytes=one, spill_dir=tmp_path)
    restored.load_state_dict(snap)
    assert restored.get(0)["count"] == 1 and restored.get(1)["count"] == 2 and restored.get(2) is None


def test_spills_are_batched_into_shared_files_collected_when_all_their_clients_leave(tmp_path):
    one = state_bytes(_state(0))
    store = ClientStateStore(memory_budget_bytes=10 * one, spill_dir=tmp_path)
    for cid in range(11):  # the 11th goes over budget: spill down to 80 % of it in one file
        store.put(cid, _state(cid))
    assert store.spills == 3 and store.spill_files == 1 and len(list(tmp_path.glob("*.pt"))) == 1
    assert [store.get(c)["count"] for c in range(11)] == list(range(11))
    shared = store.state_dict()[0].path
    store.put(0, _state(100))  # client 0 has a new state; clients 1 and 2 still use the file
    store.put(1, _state(101))
    assert store.collect_garbage() == 0 and len(list(tmp_path.glob("*.pt"))) >= 1
    store.put(2, _state(102))
    store.collect_garbage()
    assert not (tmp_path / shared.rsplit("/", 1)[-1]).exists()
    assert store.get(2)["count"] == 102


def test_single_state_spill_files_of_earlier_versions_still_load(tmp_path):
    path = tmp_path / "client3-0.pt"
    torch.save(_state(3), path)
    assert SpilledState(str(path)).load()["count"] == 3


def test_unbounded_store_never_touches_disk():
    store = ClientStateStore()
    for cid in range(50):
        store.put(cid, _state(cid, 10))
    assert store.spills == 0 and len(store) == 50
    store.put(3, None)  # stateless answer keeps the old state
    assert store.get(3)["count"] == 3


OV = ["method.name=scaffold", "schedule.rounds=6", "eval.every=2", "data.partition.num_clients=12",
      "schedule.clients_per_round=4", "model.hidden=[32]"]


def test_run_with_tiny_budget_equals_unbounded_and_resumes(tmp_path):
    a = fedweave.run(None, out=tmp_path / "a", overrides=OV)
    b = fedweave.run(None, out=tmp_path / "b", overrides=OV + ["executor.state_memory_mb=0.05"])
    assert torch.equal(a.params, b.params)
    assert not (tmp_path / "b" / "client_state").exists()  # a completed run cleans its spill files

    calls = []

    def stop_at_5(done, total, record):
        calls.append(done)
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedweave.run(None, out=tmp_path / "c", overrides=OV + ["executor.state_memory_mb=0.05", "output.checkpoint_every=2"],
                     progress=stop_at_5)
    assert any((tmp_path / "c" / "client_state").iterdir())  # states were spilled, and kept for the resume
    c = fedweave.resume(tmp_path / "c")
    assert torch.equal(a.params, c.params)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(c.history)


def test_strategy_per_client_state_is_bounded_too(tmp_path):
    """FedASMU keeps one model-sized vector per device on the server: under a budget it
    spills, and the run's numbers do not change."""
    ov = ["method.name=fedasmu", "schedule.mode=async", "schedule.concurrency=4", "schedule.max_arrivals=40",
          "system.profile=tiers", "eval.every=10", "data.partition.num_clients=12", "model.hidden=[32]"]
    from fedweave.config import load_config
    from fedweave.experiment import _execute, build_experiment
    from fedweave.rundir import RunDirectory
    from fedweave.sim.ledger import RoundLedger

    a = fedweave.run(None, out=tmp_path / "a", overrides=ov)
    seen = {}
    real_commit = RoundLedger.commit

    def spy(self, **live):
        real_commit(self, **live)
        seen["spills"] = self.server_store.spills
        seen["bytes"] = self.server_store.memory_bytes

    cfg = load_config(None, ov + ["executor.state_memory_mb=0.05"])
    exp = build_experiment(cfg)
    run_dir = RunDirectory(tmp_path / "b")
    run_dir.create(cfg.to_yaml())
    RoundLedger.commit = spy
    try:
        b = _execute(exp, run_dir, None, None)
    finally:
        RoundLedger.commit = real_commit
    assert seen["spills"] > 0 and seen["bytes"] <= 0.05 * 2**20
    assert torch.equal(a.params, b.params)
