"""A client with a valid token cannot stall or end a deployment (issue #20), on loopback:
idle upload streams, method payloads that do not fit the method, a second session with
the same token, a dead client when every client is needed each round."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

grpc = pytest.importorskip("grpc")

from fedweave.deploy.loopback import LoopbackRun  # noqa: E402
from fedweave.deploy.sessions import MAX_UPLOADS_PER_CLIENT, SESSION_METADATA  # noqa: E402
from test_deploy_server import Raw, config, health, honest_update, run_quietly  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def test_idle_upload_streams_with_a_valid_token_neither_stall_rounds_nor_the_health_check(tmp_path):
    idle_s = 3.0
    run = LoopbackRun(config(clients=2, rounds=100000), out=tmp_path / "run",
                      server_kwargs={"min_clients": 2, "stream_idle_s": idle_s})
    hold = threading.Event()

    def never_sends():
        hold.wait(120)
        return
        yield  # a generator that sends no frame

    try:
        run.start_clients()
        deadline = time.monotonic() + 60
        while health(run.address, 10).round < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        # client 0's own token and session (the worst case: the client itself, or one that copied both)
        # another process with client 0's token: refused at once (it is not the client's session)
        outsider = Raw(run.address, run.tokens[0])
        calls = [outsider.stub.SendUpdate.future(never_sends(), metadata=outsider.md, timeout=120) for _ in range(40)]
        before = health(run.address).round  # answers (in well under 3 s) while the streams are being opened
        time.sleep(2.0)
        after = health(run.address).round
        assert after - before >= 3, (before, after)  # rounds go on (a round takes ~0.02-0.2 s here)
        assert all(c.code() == grpc.StatusCode.FAILED_PRECONDITION for c in calls)
        # the worst case: client 0's token and its session (the client itself, or one that copied both)
        insider = Raw(run.address, run.tokens[0])
        insider.md += ((SESSION_METADATA, run.clients[0].session),)
        calls = [insider.stub.SendUpdate.future(never_sends(), metadata=insider.md, timeout=120) for _ in range(40)]
        t0 = time.monotonic()
        before = health(run.address).round
        # beyond the per-client bound: refused at once; the others end after idle_s without a frame
        time.sleep(1.0)
        refused = [c for c in calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(refused) == 40 - MAX_UPLOADS_PER_CLIENT
        assert health(run.address).status == "running"
        rest = [c for c in calls if c not in refused]
        for c in rest:
            c.exception(timeout=idle_s + 10)
        assert time.monotonic() - t0 <= idle_s + 10
        assert all(c.code() != grpc.StatusCode.OK for c in rest)
        assert run.server.streams.timed_out == MAX_UPLOADS_PER_CLIENT
        # client 0's own upload waited at most idle_s (plus its reconnect back-off); rounds go on
        end = time.monotonic() + 20
        while health(run.address).round < before + 3 and time.monotonic() < end:
            time.sleep(0.2)
        assert health(run.address).round >= before + 3
        assert not run.client_errors
    finally:
        hold.set()
        run.stop()


@pytest.mark.parametrize("method, bad", [
    # (payload, steps) of three bad updates: missing, mis-shaped, out of range
    ("scaffold", [({}, 1, "lacks payload 'delta_c'"), ({"delta_c": "P+1"}, 1, "shape"),
                  ({"delta_c": "f64"}, 1, "dtype")]),
    ("qffl", [({}, 1, "lacks payload 'qffl_loss'"), ({"qffl_loss": "P"}, 1, "must be a number"),
              ({"qffl_loss": -1.0}, 1, "below its minimum 0")]),
    ("fednova", [({}, 0, "at least 1"), ({}, 0, "at least 1"), ({}, 0, "at least 1")]),
])
def test_updates_that_do_not_fit_the_methods_payload_schema_are_rejected_and_the_run_goes_on(tmp_path, method, bad):
    cfg = config(rounds=4)
    cfg["method"] = {"name": method}
    run = LoopbackRun(cfg, out=tmp_path / "run", server_kwargs={"min_clients": 4})
    evil = Raw(run.address, run.tokens[3])
    n = int(run.exp.data.client_sizes()[3])
    evil.join(n)
    run.start_clients([0, 1, 2])
    good = {"scaffold": lambda b: {"delta_c": torch.zeros_like(b.params)}, "qffl": lambda b: {"qffl_loss": 0.5},
            "fednova": lambda b: {}}[method]
    for payload, steps, words in bad:
        h, b = evil.task()
        value = {k: {"P+1": torch.zeros(b.params.numel() + 1), "f64": torch.zeros(b.params.numel(), dtype=torch.float64),
                     "P": torch.zeros(b.params.numel())}.get(v, v) if isinstance(v, str) else v for k, v in payload.items()}
        code, details = evil.rejected(honest_update(3, h, b, n, num_steps=steps, payload=value),
                                      round=h["round"], counter=h["counter"])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
    h, b = evil.task()  # the fourth round: a valid update is accepted
    assert evil.send(honest_update(3, h, b, n, payload=good(b)), round=h["round"], counter=h["counter"]).accepted
    result = run.wait(120)
    assert result.status == "completed" and result.summary["rounds_completed"] == 4 and not run.client_errors
    assert result.summary["rejected_updates"] == 3 and bool(torch.isfinite(result.params).all())


def test_a_second_session_with_the_same_token_supersedes_the_first_and_both_logs_say_so(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fedweave.deploy")
    # rounds without end: the run is stopped once the second session has trained (no race with the last round)
    run = LoopbackRun(config(clients=3, rounds=100000), out=tmp_path / "run", server_kwargs={"min_clients": 3})
    run.start_clients(give_up_s=3)
    deadline = time.monotonic() + 60
    while health(run.address, 10).round < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    first = run.clients[0]
    second = run.client(0, give_up_s=3)  # another process with client 0's token
    ended: list = []  # after the stop it gives up reconnecting: keep that out of the thread's top level
    t = threading.Thread(target=lambda: ended.append(run_quietly(second)), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while (second.tasks_done < 3 or 0 not in run.client_errors) and time.monotonic() < deadline:
        time.sleep(0.1)
    rounds = health(run.address).round
    errors = dict(run.client_errors)  # before the stop (then the others give up reconnecting)
    run.stop()
    result = run.wait(60)
    t.join(30)
    assert result.status == "interrupted" and rounds >= 4  # the rounds went on with the second session
    err = errors.get(0)
    assert err is not None and "took over" in str(err) and "superseded" in str(err)  # the first one stopped
    assert set(errors) == {0}
    assert second.tasks_done >= 3 and first.session != second.session
    assert "supersedes the live session" in caplog.text  # the server's log
    assert "client 0: superseded" in caplog.text  # the first client's log


def test_a_dead_client_stalls_the_run_at_most_the_deadline_when_every_client_is_needed(tmp_path):
    deadline = 1.5
    # clients_per_round = number of clients, --min-clients left at its default (all of them)
    run = LoopbackRun(config(clients=3, rounds=4, deadline_s=deadline), out=tmp_path / "run")
    assert run.server.min_clients == 3
    dead = Raw(run.address, run.tokens[2])
    dead.join(int(run.exp.data.client_sizes()[2]))
    t0 = time.monotonic()
    run.start_clients([0, 1])
    dead.task()  # takes its task of round 1, then dies
    result = run.wait(60)  # before: round 2 waited for client 2 forever
    elapsed = time.monotonic() - t0
    assert result.status == "completed" and result.summary["rounds_completed"] == 4
    records = run.run_dir.read_metrics()
    assert records[0]["late_updates"] == 1 and deadline - 0.1 <= records[0]["round_wall_s"]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert result.summary["client_updates"] == 2 * 4  # rounds 2-4 with the two connected clients
    assert elapsed <= deadline + 15  # one deadline, not one per round nor forever
    assert not run.client_errors


def test_below_the_quorum_the_server_stops_stalled_with_a_checkpoint_to_resume(tmp_path):
    deadline = 1.0
    run = LoopbackRun(config(clients=3, rounds=4, deadline_s=deadline), out=tmp_path / "run",
                      server_kwargs={"quorum": 3})
    dead = Raw(run.address, run.tokens[2])
    dead.join(int(run.exp.data.client_sizes()[2]))
    run.start_clients([0, 1])
    dead.task()
    result = run.wait(60)
    assert result.status == "stalled" and result.summary["rounds_completed"] == 1
    assert "quorum of 3" in result.summary["message"] and "--resume" in result.summary["message"]
    ckpt = run.run_dir.load_checkpoint()
    assert ckpt is not None and int(ckpt["round"]) == 1


@pytest.mark.parametrize("mode", ["async", "buffered"])
def test_a_dead_client_holds_an_async_slot_at_most_the_deadline(tmp_path, mode):
    """One slot (concurrency 1) and a client that takes a job and dies: before, the slot
    stayed taken and the run waited forever; now the job expires after --job-timeout
    (counted late), the client is set aside until it calls again, and the live client
    fills the slot."""
    deadline = 1.0
    sched = {"mode": mode, "concurrency": 1, "max_arrivals": 4, "clients_per_round": 2}
    if mode == "buffered":
        sched["buffer_size"] = 2
    cfg = config(clients=2, **sched)
    cfg["method"] = {"name": "fedasync" if mode == "async" else "fedbuff"}
    run = LoopbackRun(cfg, out=tmp_path / "run", server_kwargs={"min_clients": 1, "job_timeout_s": deadline})
    dead = Raw(run.address, run.tokens[1])
    dead.join(int(run.exp.data.client_sizes()[1]))
    dead.task()  # the only client online takes the only slot, then dies
    t0 = time.monotonic()
    run.start_clients([0])
    result = run.wait(60)
    assert result.status == "completed"
    assert result.summary["client_updates"] == 4 and result.summary["late_updates"] >= 1
    assert time.monotonic() - t0 <= deadline + 30
    assert not run.client_errors
