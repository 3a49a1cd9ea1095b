"""The simulator: event ordering, client sampling, lr schedules, dropped and diverged updates,
run-directory contents, evaluation settings, virtual time and communication counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fedweave
from fedweave import build_experiment, load_config
from fedweave.cli import app
from fedweave.methods.base import ClientAlgorithm
from fedweave.sim.engine import round_lr
from fedweave.sim.events import EventQueue, VirtualClock
from fedweave.sim.sampling import select_clients

RECORD_KEYS = {"round", "virtual_time_s", "wall_time_s", "accuracy", "loss", "bytes_up", "bytes_down"}
SUMMARY_KEYS = {
    "name", "method", "status", "rounds_completed", "metric_name", "final_metric", "best_metric", "final_accuracy",
    "best_accuracy", "final_loss", "time_to_target_s", "virtual_time_s", "wall_time_s", "bytes_up", "bytes_down",
    "client_updates", "dropped_updates",
}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- event queue and clock ---------------------------------------------------------------------------


def test_event_queue_orders_by_time_then_insertion():
    q = EventQueue()
    q.push(2.0, "a")
    q.push(1.0, "b")
    q.push(1.0, "c")
    q.push(0.5, "d")
    q.push(1.0, "e")
    q.push(2.0, "f")
    assert len(q) == 6
    assert q.peek().kind == "d"
    out = [q.pop() for _ in range(6)]
    assert [e.kind for e in out] == ["d", "b", "c", "e", "a", "f"]
    assert [e.time for e in out] == [0.5, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert len(q) == 0 and q.peek() is None


def test_event_queue_ties_do_not_compare_payloads():
    q = EventQueue()
    q.push(1.0, "x", {"unorderable": object()})
    q.push(1.0, "y", {"unorderable": object()})
    assert [q.pop().kind, q.pop().kind] == ["x", "y"]


def test_virtual_clock_never_goes_back():
    c = VirtualClock()
    c.advance_to(2.5)
    assert c.now() == 2.5
    c.advance_to(2.5)
    with pytest.raises(ValueError):
        c.advance_to(1.0)


# -- sampling ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "weighted"])
def test_sampling_deterministic_and_in_range(kind):
    sizes = np.arange(1, 21)
    for r in range(10):
        a = select_clients(kind, r, 20, 5, seed=3, sizes=sizes)
        b = select_clients(kind, r, 20, 5, seed=3, sizes=sizes)
        assert a == b
        assert len(a) == 5 and len(set(a)) == 5
        assert a == sorted(a)
        assert all(0 <= c < 20 for c in a)
    cohorts = {tuple(select_clients(kind, r, 20, 5, seed=3, sizes=sizes)) for r in range(10)}
    assert len(cohorts) > 1  # rounds differ
    assert select_clients(kind, 0, 20, 5, 3, sizes) != select_clients(kind, 0, 20, 5, 4, sizes) or \
        select_clients(kind, 1, 20, 5, 3, sizes) != select_clients(kind, 1, 20, 5, 4, sizes)


def test_sampling_does_not_depend_on_history():
    sizes = np.ones(10, dtype=np.int64)
    later = select_clients("uniform", 7, 10, 3, 0, sizes)
    for r in range(7):
        select_clients("uniform", r, 10, 3, 0, sizes)
    assert select_clients("uniform", 7, 10, 3, 0, sizes) == later


def test_uniform_sampling_all_clients():
    assert select_clients("uniform", 0, 6, 6, 0, np.ones(6)) == list(range(6))


def test_weighted_sampling_prefers_large_clients():
    sizes = np.array([1, 1, 1, 1000])
    hits = sum(3 in select_clients("weighted", r, 4, 1, 0, sizes) for r in range(200))
    assert hits > 180
    uniform_hits = sum(3 in select_clients("uniform", r, 4, 1, 0, sizes) for r in range(200))
    assert uniform_hits < 100


def test_poisson_sampling():
    sizes = np.ones(50)
    counts = []
    for r in range(40):
        a = select_clients("poisson", r, 50, 0, seed=1, sizes=sizes, rate=0.2)
        assert a == select_clients("poisson", r, 50, 0, seed=1, sizes=sizes, rate=0.2)
        assert a == sorted(set(a)) and all(0 <= c < 50 for c in a)
        counts.append(len(a))
    assert len(set(counts)) > 1  # the cohort size varies
    assert 8.0 < np.mean(counts) < 12.0  # q N = 10 (std of the mean ~ 0.45)
    assert select_clients("poisson", 0, 50, 0, 1, sizes, rate=1.0) == list(range(50))


# -- learning-rate schedules ----------------------------------------------------------------------------


def client_cfg(**kw):
    return load_config(None, [f"client.{k}={v}" for k, v in kw.items()]).client


def test_lr_constant():
    c = client_cfg(lr=0.3)
    assert [round_lr(c, r, 10) for r in (0, 5, 9)] == [0.3, 0.3, 0.3]


def test_lr_step():
    c = client_cfg(lr=0.4, lr_schedule="step", lr_decay=0.5, lr_step_rounds=3)
    got = [round_lr(c, r, 10) for r in range(8)]
    assert got == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1])


def test_lr_exponential():
    c = client_cfg(lr=0.4, lr_schedule="exponential", lr_decay=0.9)
    assert [round_lr(c, r, 10) for r in range(4)] == pytest.approx([0.4, 0.36, 0.324, 0.2916])


def test_lr_cosine():
    c = client_cfg(lr=0.5, lr_schedule="cosine", lr_min=0.1)
    T = 8
    for r in range(T):
        assert round_lr(c, r, T) == pytest.approx(0.1 + 0.5 * 0.4 * (1 + math.cos(math.pi * r / T)))
    assert round_lr(c, 0, T) == pytest.approx(0.5)
    assert round_lr(c, T // 2, T) == pytest.approx(0.3)


def test_lr_schedule_reaches_the_clients(tiny, tmp_path, monkeypatch):
    seen = []
    orig = ClientAlgorithm.train

    def spy(self, job, worker, generator):
        seen.append((job.round, job.settings.lr))
        return orig(self, job, worker, generator)

    monkeypatch.setattr(ClientAlgorithm, "train", spy)
    fedweave.run(tiny({"client": {"lr_schedule": "step", "lr_decay": 0.5, "lr_step_rounds": 1, "lr": 0.2}}),
                 out=tmp_path / "r")
    assert sorted(set(seen)) == [(0, 0.2), (1, 0.1), (2, 0.05)]


# -- non-finite updates and divergence --------------------------------------------------------------------


def test_non_finite_update_is_dropped_and_counted(tiny, tmp_path, monkeypatch):
    bad_client = 2
    orig = ClientAlgorithm.train

    def poisoned(self, job, worker, generator):
        out = orig(self, job, worker, generator)
        if job.client_id == bad_client:
            out.update.delta = torch.full_like(out.update.delta, float("nan"))
        return out

    monkeypatch.setattr(ClientAlgorithm, "train", poisoned)
    cfg = tiny({"schedule": {"rounds": 4, "clients_per_round": 3}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    exp = build_experiment(load_config(cfg))
    cohorts = [select_clients("uniform", r, 5, 3, 0, exp.data.client_sizes()) for r in range(4)]
    expected_drops = sum(bad_client in c for c in cohorts)
    assert expected_drops > 0
    s = res.summary
    assert s["status"] == "completed"
    assert s["dropped_updates"] == expected_drops
    assert s["client_updates"] == 12 - expected_drops
    assert torch.isfinite(res.params).all()
    assert res.history[-1]["dropped_updates"] == expected_drops


def test_dropped_update_does_not_affect_the_aggregate(tiny, tmp_path, monkeypatch):
    """A round with a NaN update from client c equals the same round where c was never there."""
    cfg = tiny({"schedule": {"rounds": 1, "clients_per_round": 5}})
    orig = ClientAlgorithm.train
    dropped = {"id": 1}

    def poisoned(self, job, worker, generator):
        out = orig(self, job, worker, generator)
        if job.client_id == dropped["id"]:
            out.update.metrics["loss"] = float("inf")
        return out

    monkeypatch.setattr(ClientAlgorithm, "train", poisoned)
    res = fedweave.run(cfg, out=tmp_path / "a")
    assert res.summary["dropped_updates"] == 1
    # reference: the example-weighted mean over the other four clients' deltas
    monkeypatch.setattr(ClientAlgorithm, "train", orig)
    exp = build_experiment(load_config(cfg))
    from fedweave.sim.worker import Worker
    from fedweave.methods import ClientJob
    from fedweave.messages import Broadcast

    worker = Worker(exp.worker_setup())
    deltas, sizes = [], []
    for cid in range(5):
        if cid == dropped["id"]:
            continue
        job = ClientJob(cid, 0, 0, Broadcast(0, exp.initial_params, exp.initial_buffers), None,
                        exp.train_settings(exp.config.client.lr))
        u = worker.run(job).update
        deltas.append(u.delta)
        sizes.append(u.num_examples)
    w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    expected = exp.initial_params + sum(wi * d for wi, d in zip(w, deltas))
    assert torch.allclose(res.params, expected, atol=1e-6)


DIVERGING = {"model": {"name": "logistic"}, "client": {"lr": 1e36}}


def test_diverging_run_reports_diverged(tiny, tmp_path):
    res = fedweave.run(tiny(DIVERGING), out=tmp_path / "d")
    s = res.summary
    assert s["status"] == "diverged"
    assert "non-finite" in s["message"]
    assert s["rounds_completed"] < 3
    on_disk = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert on_disk["status"] == "diverged"
    assert on_disk["message"] == s["message"]


def test_diverging_run_via_server_lr(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "fedavgm", "server_lr": 1e300}}), out=tmp_path / "d")
    assert res.summary["status"] == "diverged"
    assert "non-finite" in res.summary["message"]


def test_cli_exits_1_for_diverged_run(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "run", "--quiet", "--out", str(out), "--set", "model.name=logistic", "--set", "client.lr=1e36",
        "--set", "schedule.rounds=3", "--set", "schedule.clients_per_round=3", "--set", "client.epochs=1",
        "--set", "data.partition.num_clients=5",
    ])
    assert result.exit_code == 1, result.output
    assert "diverged" in result.output
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_all_updates_non_finite_is_divergence(tiny, tmp_path):
    res = fedweave.run(tiny({"client": {"lr": 1e20}}), out=tmp_path / "d")
    assert res.summary["client_updates"] == 0 or res.summary["status"] == "diverged"
    assert res.summary["status"] == "diverged"


# -- run directory -------------------------------------------------------------------------------------------


def test_run_directory_contents(tiny, tmp_path):
    out = tmp_path / "run"
    res = fedweave.run(tiny(), out=out)
    assert res.run_dir == out
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json"}
    assert not (out / "checkpoint.pt").exists()
    cfg = load_config(out / "config.yaml")
    assert cfg.schedule.rounds == 3 and cfg.model.hidden == [16]
    assert cfg.output.dir == str(out)
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert RECORD_KEYS <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["loss"] > 0
    assert records == [{**r, "wall_time_s": r["wall_time_s"]} for r in res.history]
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed"
    assert summary["name"] == "tiny" and summary["method"] == "fedavg"
    assert summary["rounds_completed"] == 3
    assert summary["metric_name"] == "accuracy"
    assert summary["final_accuracy"] == summary["final_metric"] == records[-1]["accuracy"]
    assert summary["best_accuracy"] == max(r["accuracy"] for r in records)
    assert summary["final_loss"] == records[-1]["loss"]
    assert summary["bytes_up"] == records[-1]["bytes_up"]
    assert summary["virtual_time_s"] == records[-1]["virtual_time_s"]
    assert summary["client_updates"] == 9 and summary["dropped_updates"] == 0
    assert summary["time_to_target_s"] is None


def test_eval_every_and_final_window(tiny, tmp_path):
    res = fedweave.run(tiny({"schedule": {"rounds": 7}, "eval": {"every": 3, "final_window": 2}}), out=tmp_path / "r")
    records = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["round"] for r in records] == [3, 6, 7]  # every 3, and after the last round
    s = res.summary
    assert s["final_accuracy"] == pytest.approx((records[-1]["accuracy"] + records[-2]["accuracy"]) / 2, abs=1e-15)
    assert s["final_loss"] == pytest.approx((records[-1]["loss"] + records[-2]["loss"]) / 2, abs=1e-15)
    assert s["best_accuracy"] == max(r["accuracy"] for r in records)


def test_time_to_target(tiny, tmp_path):
    cfg = tiny({"schedule": {"rounds": 8, "clients_per_round": 5}, "eval": {"target": 0.6}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    records = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    first = next(r for r in records if r["accuracy"] >= 0.6)
    assert first["round"] > 1  # the target is not trivially met
    assert res.summary["time_to_target_s"] == first["virtual_time_s"]
    res2 = fedweave.run(cfg, out=tmp_path / "r2", overrides=["eval.target=1.01"])
    assert res2.summary["time_to_target_s"] is None


def test_virtual_time_and_bytes_by_hand(tiny, tmp_path):
    """Uniform devices, every client every round, one epoch: a round lasts as long as the
    largest client's job; bytes are the analytic sizes of the messages."""
    cfg = tiny({
        "data": {"partition": {"kind": "dirichlet", "num_clients": 4, "alpha": 0.5}},
        "schedule": {"rounds": 3, "clients_per_round": 4},
        "client": {"epochs": 1},
        "system": {"seconds_per_sample": 0.002, "uplink_mbps": 2.0, "downlink_mbps": 8.0, "latency_s": 0.1,
                   "reference_params": 2 * 1210},  # compute scales by num_params / reference_params = 1/2
    })
    res = fedweave.run(cfg, out=tmp_path / "r")
    exp = build_experiment(load_config(cfg))
    P = exp.spec.num_params
    assert P == 64 * 16 + 16 + 16 * 10 + 10
    up, down = P * 4 + 8 * 5, P * 4 + 8  # delta + (id, version, examples, steps, loss); params + version
    sizes = exp.data.client_sizes()
    job = [0.1 + down / (8.0e6 / 8) + n * 0.002 * 0.5 + 0.1 + up / (2.0e6 / 8) for n in sizes]
    round_time = max(job)
    records = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    times = [r["virtual_time_s"] for r in records]
    assert all(b > a for a, b in zip(times, times[1:]))
    for k, t in enumerate(times, start=1):
        assert t == pytest.approx(k * round_time, rel=1e-12)
    assert res.summary["virtual_time_s"] == pytest.approx(3 * round_time, rel=1e-12)
    assert [r["bytes_up"] for r in records] == [4 * up * k for k in (1, 2, 3)]
    assert [r["bytes_down"] for r in records] == [4 * down * k for k in (1, 2, 3)]
    assert res.summary["client_updates"] == 12


def test_virtual_time_with_sampling_uses_the_cohort(tiny, tmp_path):
    cfg = tiny({"schedule": {"rounds": 4, "clients_per_round": 2}, "client": {"epochs": 2},
                "system": {"latency_s": 0.0, "reference_params": 1210}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    exp = build_experiment(load_config(cfg))
    P, sizes = exp.spec.num_params, exp.data.client_sizes()
    up, down = P * 4 + 40, P * 4 + 8
    total = 0.0
    for r in range(4):
        cohort = select_clients("uniform", r, 5, 2, 0, sizes)
        total += max(down / (50e6 / 8) + 2 * sizes[c] * 1e-3 + up / (10e6 / 8) for c in cohort)
    assert res.summary["virtual_time_s"] == pytest.approx(total, rel=1e-12)


def test_scaffold_bytes_include_control_variates(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "scaffold"}}), out=tmp_path / "r")
    P = res.summary["num_params"]
    K = 3 * 3
    assert res.summary["bytes_up"] == K * (2 * P * 4 + 8 * 5)
    assert res.summary["bytes_down"] == K * (2 * P * 4 + 8)


def test_progress_callback(tiny, tmp_path):
    calls = []
    fedweave.run(tiny({"schedule": {"rounds": 4}, "eval": {"every": 2}}), out=tmp_path / "r",
                 progress=lambda done, total, rec: calls.append((done, total, None if rec is None else rec["round"])))
    assert calls == [(1, 4, None), (2, 4, 2), (3, 4, None), (4, 4, 4)]


# -- compute charged before training matches what training processed ----------------------------------


@pytest.mark.parametrize("n, settings", [
    (10, dict(epochs=1, batch_size=4)),
    (10, dict(epochs=3, batch_size=4)),
    (10, dict(epochs=None, local_steps=4, batch_size=4)),  # 2 full epochs (3 steps each) would be 6
    (10, dict(epochs=None, local_steps=7, batch_size=4)),  # 2 epochs + 1 full batch
    (9, dict(epochs=None, local_steps=2, batch_size=32)),
    (1, dict(epochs=2, batch_size=5)),
])
def test_examples_processed_known_before_training_matches_training(n, settings):
    from fedweave.params import FlatModel
    from fedweave.tasks import make_task
    from fedweave.train import TrainSettings, local_train

    s = TrainSettings(lr=0.01, **settings)
    torch.manual_seed(0)
    model = FlatModel(torch.nn.Linear(2, 3))
    x, y = torch.randn(n, 2), torch.randint(0, 3, (n,))
    result = local_train(model, make_task("classification"), x, y, torch.arange(n), s, torch.Generator().manual_seed(0))
    assert result.steps == s.num_steps(n)
    assert s.examples_processed(n) == result.examples_processed


def test_summary_counts_participation_per_client(tmp_path):
    import fedweave as fw

    r = fw.run(None, out=tmp_path / "p", overrides=["schedule.rounds=4", "eval.every=4", "model.hidden=[8]"])
    part = r.summary["participation"]
    assert len(part) == 20 and sum(part) == r.summary["client_updates"] == 40
    assert max(part) <= 4


def test_sync_eval_on_a_virtual_time_grid_sees_the_model_of_the_last_completed_round(tmp_path):
    import fedweave as fw

    common = ["schedule.rounds=6", "model.hidden=[8]", "system.profile=tiers"]
    per_round = fw.run(None, out=tmp_path / "r", overrides=common)
    grid = fw.run(None, out=tmp_path / "g", overrides=common + ["eval.every_s=1.5"])
    by_round = {0: None, **{h["round"]: h["accuracy"] for h in per_round.history}}
    times = [h["virtual_time_s"] for h in grid.history[:-1]]
    assert times == pytest.approx([1.5 * (i + 1) for i in range(len(times))])
    for h in grid.history[:-1]:
        if h["round"] > 0:
            assert h["accuracy"] == by_round[h["round"]]
    assert grid.history[-1]["round"] == 6 and grid.history[-1]["accuracy"] == per_round.history[-1]["accuracy"]


def test_sync_time_budget_ends_with_an_evaluation_of_the_last_round(tmp_path):
    import fedweave as fw

    r = fw.run(None, out=tmp_path / "b", overrides=["schedule.rounds=40", "eval.every=100", "schedule.max_time_s=3",
                                                      "model.hidden=[8]"])
    assert r.summary["rounds_completed"] < 40
    assert r.history[-1]["round"] == r.summary["rounds_completed"]
