"""The simulator's asynchronous machinery: event-order ties, staleness, deadlines,
over-selection, reproducibility, checkpoint/resume in async and buffered modes, device
traces and the virtual-time evaluation grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fedweave
from fedweave import DataError, build_experiment, load_config
from fedweave.messages import Broadcast, Update
from fedweave.methods.fedasync import FedAsyncStrategy
from fedweave.methods.base import Strategy
from fedweave.sim.devices import make_fleet, read_trace
from fedweave.sim.executors import SerialExecutor
from fedweave.sim.sampling import select_clients


def metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in lines if line.strip()]


def iid(n):
    return {"data": {"partition": {"kind": "iid", "num_clients": n}}}


def _merge(*parts):
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- event ordering ---------------------------------------------------------------------------------


def test_simultaneous_arrivals_are_merged_in_dispatch_order(tiny, tmp_path, monkeypatch):
    """Equal devices, equal work: every job of a wave ends at the same virtual time; ties go
    to the event scheduled first, i.e. the order of dispatch."""
    n = 6
    dispatched, arrived = [], []
    orig_configure, orig_update = Strategy.configure, FedAsyncStrategy.on_update

    def configure(self, ids, state, ctx):
        dispatched.extend(ids)
        return orig_configure(self, ids, state, ctx)

    def on_update(self, update, state, ctx):
        arrived.append((ctx.clock.now(), update.client_id))
        return orig_update(self, update, state, ctx)

    monkeypatch.setattr(FedAsyncStrategy, "configure", configure)
    monkeypatch.setattr(FedAsyncStrategy, "on_update", on_update)
    cfg = tiny(_merge(iid(n), {"method": {"name": "fedasync"}, "client": {"local_steps": 2, "epochs": None},
                               "schedule": {"mode": "async", "concurrency": n, "max_arrivals": 3 * n}}))
    fedweave.run(cfg, out=tmp_path / "r")
    assert len(arrived) == 3 * n
    times = [t for t, _ in arrived]
    for wave in range(3):
        assert len(set(times[wave * n:(wave + 1) * n])) == 1  # a whole wave ties
    assert times[0] < times[n] < times[2 * n]
    assert [c for _, c in arrived] == dispatched[: 3 * n]
    assert sorted(dispatched[:n]) == list(range(n))


# -- staleness --------------------------------------------------------------------------------------


def test_staleness_is_recorded_with_concurrency_and_zero_without(tiny, tmp_path):
    base = {"method": {"name": "fedasync"}, "system": {"profile": "tiers"}, "eval": {"every": 1}}
    one = fedweave.run(tiny(_merge(base, {"schedule": {"mode": "async", "concurrency": 1, "max_arrivals": 10}})),
                       out=tmp_path / "one")
    assert all(r["staleness_max"] == 0 and r["staleness_mean"] == 0 for r in one.history)
    many = fedweave.run(tiny(_merge(base, {"schedule": {"mode": "async", "concurrency": 4, "max_arrivals": 20}})),
                        out=tmp_path / "many")
    assert many.history[-1]["staleness_mean"] > 0 and many.history[-1]["staleness_max"] >= 1


def test_staleness_equals_versions_since_dispatch(tiny, tmp_path, monkeypatch):
    taus, versions_at_dispatch = [], {}
    orig_configure, orig_update = Strategy.configure, FedAsyncStrategy.on_update

    def configure(self, ids, state, ctx):
        for cid in ids:
            versions_at_dispatch[cid] = state.version
        return orig_configure(self, ids, state, ctx)

    def on_update(self, update, state, ctx):
        assert update.base_version == versions_at_dispatch[update.client_id]
        taus.append(state.version - update.base_version)
        return orig_update(self, update, state, ctx)

    monkeypatch.setattr(FedAsyncStrategy, "configure", configure)
    monkeypatch.setattr(FedAsyncStrategy, "on_update", on_update)
    res = fedweave.run(tiny({"method": {"name": "fedasync"}, "system": {"profile": "tiers"},
                             "schedule": {"mode": "async", "concurrency": 4, "max_arrivals": 25}}), out=tmp_path / "r")
    last = res.history[-1]
    assert last["staleness_mean"] == pytest.approx(np.mean(taus))
    assert last["staleness_max"] == max(taus)


def test_max_staleness_drops_stale_arrivals(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "fedasync"}, "system": {"profile": "tiers"},
                             "schedule": {"mode": "async", "concurrency": 5, "max_arrivals": 30, "max_staleness": 1}}),
                       out=tmp_path / "r")
    last = res.history[-1]
    assert last["staleness_max"] <= 1
    assert last["dropped_updates"] > 0
    assert last["client_updates"] + last["dropped_updates"] == last["arrivals"] == 30
    assert last["version"] == last["client_updates"]


# -- deadlines and over-selection (sync) ---------------------------------------------------------


def _durations(exp, round_=0):
    """Each client's job duration (download + compute + upload) in virtual seconds."""
    p = exp.initial_params
    down = Broadcast(0, p, exp.initial_buffers).num_bytes()
    up = Update(0, 0, torch.zeros_like(p), exp.initial_buffers.clone(), 1, 1, {"loss": 0.0}).num_bytes()
    settings = exp.train_settings(exp.config.client.lr)
    out = {}
    for cid in range(exp.data.num_clients):
        prof = exp.fleet[cid]
        examples = settings.examples_processed(len(exp.data.client_train[cid]))
        t = prof.download_s(down)
        t = t + exp.fleet.compute_s(cid, examples)
        out[cid] = t + prof.upload_s(up)
    return out


def test_deadline_drops_exactly_the_late_clients(tiny, tmp_path):
    n, k, rounds = 10, 5, 4
    cfg = load_config(tiny(_merge(iid(n), {"schedule": {"rounds": rounds, "clients_per_round": k},
                                           "system": {"profile": "tiers", "tiers": [[0.6, 1.0], [0.4, 10.0]], "latency_s": 0.0}})))
    exp = build_experiment(cfg)
    dur = _durations(exp)
    fast = [d for c, d in dur.items() if exp.fleet.slowdowns[c] == 1.0]
    slow = [d for c, d in dur.items() if exp.fleet.slowdowns[c] == 10.0]
    assert max(fast) * 2 < min(slow)
    deadline = (max(fast) + min(slow)) / 2
    expected_late = 0
    for r in range(rounds):
        cohort = select_clients("uniform", r, n, k, cfg.seed, exp.data.client_sizes(), None, np.arange(n))
        expected_late += sum(dur[c] > deadline for c in cohort)
    assert 0 < expected_late < rounds * k
    res = fedweave.run(cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"deadline_s": deadline})}),
                       out=tmp_path / "r")
    s = res.history[-1]
    assert s["late_updates"] == expected_late
    assert s["client_updates"] == rounds * k - expected_late
    assert s["dropped_updates"] == 0


def test_over_selection_keeps_the_first_k(tiny, tmp_path, monkeypatch):
    n, k, rounds = 10, 3, 3
    cfg = load_config(tiny(_merge(iid(n), {"schedule": {"rounds": rounds, "clients_per_round": k, "over_select": 0.5},
                                           "system": {"profile": "tiers", "tiers": [[0.5, 1.0], [0.5, 10.0]], "latency_s": 0.0}})))
    exp = build_experiment(cfg)
    dur = _durations(exp)
    kept = []
    from fedweave.methods.stages import StagedStrategy

    orig = StagedStrategy.aggregate

    def spy(self, updates, state, ctx):
        kept.append([u.client_id for u in updates])
        return orig(self, updates, state, ctx)

    monkeypatch.setattr(StagedStrategy, "aggregate", spy)
    res = fedweave.run(cfg, out=tmp_path / "r")
    s = res.history[-1]
    assert s["client_updates"] == rounds * k
    assert s["late_updates"] == rounds * (5 - k)  # ceil(1.5 * 3) = 5 dispatched
    for r in range(rounds):
        cohort = select_clients("uniform", r, n, 5, cfg.seed, exp.data.client_sizes(), None, np.arange(n))
        fastest = sorted(sorted(cohort, key=lambda c: (dur[c], c))[:k])
        assert kept[r] == fastest


# -- reproducibility and resume ----------------------------------------------------------------------


@pytest.mark.parametrize("method,mode", [("fedasync", "async"), ("fedasmu", "async"), ("fedbuff", "buffered"),
                                         ("afl_staleness", "async")])
def test_async_runs_are_reproducible_bit_for_bit(tiny, tmp_path, method, mode):
    cfg = tiny({"method": {"name": method}, "system": {"profile": "tiers", "dropout": 0.1},
                "schedule": {"mode": mode, "concurrency": 4, "buffer_size": 3, "max_arrivals": 24},
                "eval": {"every": 2}})
    a = fedweave.run(cfg, out=tmp_path / "a")
    b = fedweave.run(cfg, out=tmp_path / "b")
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert torch.equal(a.params, b.params)


def _stop_at_evaluation(k):
    calls = {"n": 0}

    def progress(done, total, record):
        calls["n"] += 1
        if calls["n"] == k:
            raise KeyboardInterrupt

    return progress


# Resume in async/buffered modes. Commits happen inside ``merged()`` (at an evaluation or a
# checkpoint), before the slot freed by the arrival being merged is refilled; a resumed run
# must make that dispatch first (fixed in the engine after these tests exposed it).


@pytest.mark.parametrize("method,mode,extra", [
    ("fedasmu", "async", {}),
    ("afl_staleness", "async", {}),
    ("fedbuff", "buffered", {"server_momentum": 0.5}),
])
def test_checkpoint_and_resume_equal_an_uninterrupted_run(tiny, tmp_path, method, mode, extra):
    cfg = tiny({"method": {"name": method, **extra}, "system": {"profile": "tiers"},
                "schedule": {"mode": mode, "concurrency": 4, "buffer_size": 3, "max_arrivals": 30},
                "output": {"checkpoint_every": 2}, "eval": {"every": 1}})
    full = fedweave.run(cfg, out=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=tmp_path / "cut", progress=_stop_at_evaluation(4))
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "interrupted"
    resumed = fedweave.resume(tmp_path / "cut")
    assert resumed.status == "completed"
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert torch.equal(resumed.params, full.params)


@pytest.mark.parametrize("method,mode", [("fedasmu", "async"), ("fedbuff", "buffered")])
def test_interrupt_in_the_middle_of_training_resumes_exactly(tiny, tmp_path, monkeypatch, method, mode):
    """A Ctrl-C while a client trains (between commits) resumes from the last commit."""
    cfg = tiny({"method": {"name": method}, "system": {"profile": "tiers"},
                "schedule": {"mode": mode, "concurrency": 4, "buffer_size": 3, "max_arrivals": 30},
                "eval": {"every": 3}})
    _interrupt_at_collect_then_resume(cfg, tmp_path, monkeypatch, 17)




@pytest.mark.parametrize("method,mode,extra", [
    ("fedasmu", "async", {}),
    ("fedasync", "async", {}),
    ("afl_staleness", "async", {}),
    ("fedbuff", "buffered", {"server_momentum": 0.5}),
])
def test_resume_from_a_virtual_time_grid_evaluation_equals_uninterrupted(tiny, tmp_path, method, mode, extra):
    """Commits on the eval.every_s grid happen between events (every slot filled), so the
    methods' state (FedASMU's per-device vectors and client state, AFL's upload times,
    FedBuff's momentum and partial buffer) round-trips through the checkpoint exactly."""
    cfg = tiny({"method": {"name": method, **extra}, "system": {"profile": "tiers"},
                "schedule": {"mode": mode, "concurrency": 4, "buffer_size": 3, "max_time_s": 1.2},
                "eval": {"every_s": 0.1}})
    full = fedweave.run(cfg, out=tmp_path / "full")
    assert len(full.history) >= 8
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=tmp_path / "cut", progress=_stop_at_evaluation(5))
    resumed = fedweave.resume(tmp_path / "cut")
    assert resumed.status == "completed"
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert torch.equal(resumed.params, full.params)


# -- device traces ---------------------------------------------------------------------------------


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_trace_profile_is_used(tiny, tmp_path):
    rows = "\n".join(f"{c},{0.001 * (c + 1)},10,50," for c in range(5))
    trace = _write(tmp_path / "t.csv", "client_id,seconds_per_sample,uplink_mbps,downlink_mbps,availability\n" + rows + "\n")
    cfg = load_config(tiny({"system": {"profile": "trace", "trace": trace}}))
    fleet = make_fleet(cfg.system, 5, 0)
    assert [p.seconds_per_sample for p in fleet.profiles] == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005])
    res = fedweave.run(tiny({"system": {"profile": "trace", "trace": trace}, "method": {"name": "fedasync"},
                             "schedule": {"mode": "async", "concurrency": 2, "max_arrivals": 6}}), out=tmp_path / "r")
    assert res.status == "completed"


@pytest.mark.parametrize("text,line,words", [
    ("client_id,seconds_per_sample,uplink_mbps\n0,0.001,10\n", 1, "downlink_mbps"),
    ("client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n0,0.001,10,50\n1,-0.002,10,50\n", 3, "positive"),
    ("client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n0,0.001,10,50\n1,0.001,0,50\n", 3, "positive"),
    ("client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n7,0.001,10,50\n", 2, "unknown client id 7"),
    ("client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n0,0.001,10,50\n0,0.001,10,50\n", 3, "twice"),
    ("client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n0,fast,10,50\n", 2, "number"),
    ("client_id,seconds_per_sample,uplink_mbps,downlink_mbps,availability\n0,0.001,10,50,5-2\n", 2, "start < end"),
])
def test_malformed_trace_names_file_and_line(tmp_path, text, line, words):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as info:
        read_trace(path, 2, 0.0)
    msg = str(info.value)
    assert path in msg and f"line {line}" in msg and words in msg


def test_trace_missing_a_client_and_missing_file(tmp_path, tiny):
    path = _write(tmp_path / "short.csv", "client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n0,0.001,10,50\n")
    with pytest.raises(DataError, match=r"short\.csv.*client\(s\) \[1\]"):
        read_trace(path, 2, 0.0)
    with pytest.raises(DataError, match="does not exist"):
        build_experiment(load_config(tiny({"system": {"profile": "trace", "trace": str(tmp_path / "nope.csv")}})))


# -- the virtual-time evaluation grid ---------------------------------------------------------------


def test_eval_every_s_grid(tiny, tmp_path, monkeypatch):
    versions_at = []
    orig = FedAsyncStrategy.on_update

    def on_update(self, update, state, ctx):
        versions_at.append((ctx.clock.now(), state.version + 1))
        return orig(self, update, state, ctx)

    monkeypatch.setattr(FedAsyncStrategy, "on_update", on_update)
    probe = fedweave.run(tiny({"method": {"name": "fedasync"}, "system": {"profile": "tiers"},
                               "schedule": {"mode": "async", "concurrency": 3, "max_arrivals": 40}}), out=tmp_path / "probe")
    horizon = probe.history[-1]["virtual_time_s"]
    every = horizon / 8
    versions_at.clear()
    res = fedweave.run(tiny({"method": {"name": "fedasync"}, "system": {"profile": "tiers"}, "eval": {"every_s": every},
                             "schedule": {"mode": "async", "concurrency": 3, "max_time_s": 5.5 * every}}),
                       out=tmp_path / "grid")
    times = [r["virtual_time_s"] for r in res.history]
    assert times[:5] == pytest.approx([every * k for k in range(1, 6)])
    assert times[-1] == pytest.approx(5.5 * every) and len(times) == 6
    # each grid record shows the model after exactly the merges strictly before the grid point
    for r in res.history[:5]:
        merged = [v for t, v in versions_at if t < r["virtual_time_s"]]
        assert r["version"] == (max(merged) if merged else 0)
    assert all(t <= 5.5 * every for t, _ in versions_at)


def test_resume_from_a_checkpoint_between_evaluations_keeps_train_loss(tiny, tmp_path, monkeypatch):
    cfg = tiny({"method": {"name": "fedasync"}, "system": {"profile": "tiers"},
                "schedule": {"mode": "async", "concurrency": 4, "max_arrivals": 24},
                "output": {"checkpoint_every": 2}, "eval": {"every": 5}})
    # the 9th collect comes after the checkpoint at version 8, before the evaluation at 10
    _interrupt_at_collect_then_resume(cfg, tmp_path, monkeypatch, 9)


def test_resume_from_the_last_evaluation_adds_nothing(tiny, tmp_path):
    cfg = tiny({"method": {"name": "fedasync"}, "system": {"profile": "tiers"},
                "schedule": {"mode": "async", "concurrency": 4, "max_arrivals": 12}, "eval": {"every": 1}})
    full = fedweave.run(cfg, out=tmp_path / "full")
    assert len(full.history) == 12
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=tmp_path / "cut", progress=_stop_at_evaluation(12))
    resumed = fedweave.resume(tmp_path / "cut")
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert torch.equal(resumed.params, full.params)


def test_intermediate_fetch_is_counted_in_the_downlink(tiny, tmp_path, monkeypatch):
    submits = {"n": 0}
    orig_submit = SerialExecutor.submit

    def submit(self, job):
        submits["n"] += 1  # FedASMU jobs are submitted at their fetch
        return orig_submit(self, job)

    monkeypatch.setattr(SerialExecutor, "submit", submit)
    configured = {"n": 0}
    orig_configure = Strategy.configure

    def configure(self, ids, state, ctx):
        configured["n"] += len(ids)
        return orig_configure(self, ids, state, ctx)

    monkeypatch.setattr(Strategy, "configure", configure)
    cfg = tiny({"method": {"name": "fedasmu"}, "schedule": {"mode": "async", "concurrency": 3, "max_arrivals": 9}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    exp = build_experiment(load_config(cfg))
    model_bytes = Broadcast(0, exp.initial_params, exp.initial_buffers).num_bytes()
    assert submits["n"] > 0
    assert res.history[-1]["bytes_down"] == (configured["n"] + submits["n"]) * model_bytes


def _interrupt_at_collect_then_resume(cfg, tmp_path, monkeypatch, at_call: int) -> None:
    """Ctrl-C while the ``at_call``-th client job is collected (between commits); the resumed
    run must end exactly as an uninterrupted one."""
    full = fedweave.run(cfg, out=tmp_path / "full")
    orig = SerialExecutor.collect
    calls = {"n": 0}

    def collect(self, handle):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return orig(self, handle)

    monkeypatch.setattr(SerialExecutor, "collect", collect)
    with pytest.raises(KeyboardInterrupt):
        fedweave.run(cfg, out=tmp_path / "cut")
    monkeypatch.setattr(SerialExecutor, "collect", orig)
    resumed = fedweave.resume(tmp_path / "cut")
    assert metrics(tmp_path / "cut") == metrics(tmp_path / "full")
    assert torch.equal(resumed.params, full.params)


# -- the max_staleness bound, at the limit ------------------------------------------------------------


def _speed_trace(path, seconds_per_sample):
    """Devices whose jobs differ only in compute speed: no latency, and links so fast that a
    ~5 kB model moves in microseconds, so a job lasts n_k x seconds_per_sample x P / P_ref."""
    rows = "\n".join(f"{c},{s},1e6,1e6" for c, s in enumerate(seconds_per_sample))
    return _write(path, "client_id,seconds_per_sample,uplink_mbps,downlink_mbps\n" + rows + "\n")


@pytest.mark.parametrize("mode", ["async", "buffered"])
@pytest.mark.parametrize("limit", [3, 2])
def test_an_arrival_exactly_at_max_staleness_is_merged_and_one_above_is_dropped(tiny, tmp_path, mode, limit):
    """Staleness known by construction. Clients hold equal shares (iid; sizes differ by at
    most one example in ~480) and the slow client computes 3.5x slower than the fast ones,
    so while it trains the fast clients complete jobs at d, 2d, 3d and it arrives at 3.5d.
    async: one fast client, each arrival one version -> the slow arrival has staleness 3.
    buffered (buffer of 2): two fast clients, each pair of arrivals one version -> again 3.
    max_staleness=3 must merge it (staleness == limit); max_staleness=2 must drop it."""
    fast = 2 if mode == "buffered" else 1
    speeds = [1e-3] * fast + [3.5e-3]
    n = len(speeds)
    trace = _speed_trace(tmp_path / "speeds.csv", speeds)
    arrivals = 3 * fast + 1  # three fast waves, then the slow arrival; the budget stops there
    schedule = {"mode": mode, "concurrency": n, "max_arrivals": arrivals, "max_staleness": limit}
    if mode == "buffered":
        schedule["buffer_size"] = fast
    cfg = tiny(_merge(iid(n), {"method": {"name": "fedbuff" if mode == "buffered" else "fedasync"},
                               "schedule": {**schedule, "clients_per_round": n},
                               "system": {"profile": "trace", "trace": trace, "latency_s": 0.0}}))
    last = fedweave.run(cfg, out=tmp_path / "r").history[-1]
    assert last["arrivals"] == arrivals
    if limit == 3:
        assert last["dropped_updates"] == 0 and last["client_updates"] == arrivals
        assert last["staleness_max"] == 3
    else:
        assert last["dropped_updates"] == 1 and last["client_updates"] == arrivals - 1
        # async: a fast client always trains from the newest model; buffered: the first of a
        # pair is sent out again before its partner's arrival flushes the buffer, so 1
        assert last["staleness_max"] == (1 if mode == "buffered" else 0)
    # three fast waves are three versions; the merged slow update makes a fourth in async mode,
    # while in buffered mode it waits alone in a buffer that never fills
    assert last["version"] == (4 if mode == "async" and limit == 3 else 3)
