"""The deployment server in one process (server and honest clients as threads, on 127.0.0.1):
tokens, malformed updates, deadlines, TLS, and models larger than gRPC's message limit."""

from __future__ import annotations

import logging
import time

import pytest
import torch

grpc = pytest.importorskip("grpc")
pytest.importorskip("cryptography")

import fedweave  # noqa: E402
from fedweave.deploy import fedweave_pb2 as pb2  # noqa: E402
from fedweave.deploy import fedweave_pb2_grpc as pb2_grpc  # noqa: E402
from fedweave.deploy.loopback import LoopbackRun  # noqa: E402
from fedweave.deploy.tls import channel_credentials, write_self_signed  # noqa: E402
from fedweave.deploy.wire import PROTOCOL, assemble, decode_broadcast, encode_update  # noqa: E402
from fedweave.messages import Update  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def config(clients: int = 4, **schedule) -> dict:
    return {
        "name": "deploy-tiny", "seed": 0,
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "num_clients": clients, "alpha": 0.5}},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
        "schedule": {"rounds": 3, "clients_per_round": clients, **schedule},
    }


class Raw:
    """A hand-driven client: the RPCs one by one, for updates an honest client never sends."""

    def __init__(self, address: str, token: str | None, creds=None):
        self.channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
        self.stub = pb2_grpc.FederationStub(self.channel)
        self.md = (("authorization", f"Bearer {token}"),) if token is not None else ()

    def join(self, n: int):
        return self.stub.Join(pb2.JoinRequest(num_examples=n, protocol=PROTOCOL), metadata=self.md, timeout=10)

    def task(self, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            header, data, _ = assemble(self.stub.GetTask(pb2.TaskRequest(wait_ms=1000), metadata=self.md, timeout=30), 1 << 30)
            if header["status"] == "task":
                return header, decode_broadcast(header, data)
            assert header["status"] == "wait", header
        raise TimeoutError("no task")

    def send(self, update: Update, **fields):
        enc = encode_update(update, **fields)
        frames = (pb2.Frame(header=h, data=bytes(d)) for h, d in enc.frames(1 << 20))
        return self.stub.SendUpdate(frames, metadata=self.md, timeout=30)

    def rejected(self, update: Update, **fields) -> tuple:
        with pytest.raises(grpc.RpcError) as info:
            self.send(update, **fields)
        return info.value.code(), info.value.details()


def honest_update(cid: int, header: dict, b, n: int, **changes) -> Update:
    kw = dict(client_id=cid, base_version=b.version, delta=torch.zeros_like(b.params), buffers=b.buffers.clone(),
              num_examples=n, num_steps=1, metrics={"loss": 1.0})
    kw.update(changes)
    return Update(**kw)


def run_quietly(client):
    """A client's run() in a thread: what it returned, or the error it ended with."""
    try:
        return client.run()
    except Exception as exc:
        return exc


def health(address: str, timeout: float = 3.0):
    return Raw(address, None).stub.Health(pb2.HealthRequest(), timeout=timeout)


def test_calls_without_a_valid_token_are_unauthenticated_and_logged_without_the_token(tmp_path, caplog):
    run = LoopbackRun(config(), out=tmp_path / "run", server_kwargs={"min_clients": 4})
    try:
        health = Raw(run.address, None).stub.Health(pb2.HealthRequest(), timeout=10)
        assert health.status == "waiting" and health.rounds == 3 and health.protocol == PROTOCOL
        secret = "fwt_this-is-not-a-valid-token-0123456789"
        caplog.set_level(logging.WARNING, logger="fedweave.deploy")
        for token in (None, secret, run.tokens[0] + "x"):
            raw = Raw(run.address, token)
            calls = {
                "Join": lambda: raw.join(10),
                "GetTask": lambda: list(raw.stub.GetTask(pb2.TaskRequest(wait_ms=10), metadata=raw.md, timeout=10)),
                "SendUpdate": lambda: raw.stub.SendUpdate(iter([pb2.Frame(header=b"{}")]), metadata=raw.md, timeout=10),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, token)
        assert caplog.text.count("UNAUTHENTICATED") >= 9
        assert secret not in caplog.text and run.tokens[0] not in caplog.text
        # a valid token, but more examples than the bound registered for its client
        with pytest.raises(grpc.RpcError) as info:
            Raw(run.address, run.tokens[1]).join(10**6)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bound" in info.value.details()
        run.stop()
        assert run.wait(30).status == "interrupted"
    finally:
        run.stop()


def test_malformed_updates_are_rejected_while_the_run_completes(tmp_path):
    run = LoopbackRun(config(rounds=4), out=tmp_path / "run", server_kwargs={"min_clients": 4})
    evil = Raw(run.address, run.tokens[3])
    n = int(run.exp.data.client_sizes()[3])
    evil.join(n)
    run.start_clients([0, 1, 2])
    reasons = []

    def reject(update, expect, **fields):
        code, details = evil.rejected(update, **fields)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert expect in details, details
        reasons.append(details)

    # round 1: an update claiming another client, then one of the wrong size
    h, b = evil.task()
    fields = dict(round=h["round"], counter=h["counter"])
    reject(honest_update(2, h, b, n), "bound to client 3", **fields)
    reject(honest_update(3, h, b, n, delta=torch.zeros(b.params.numel() + 1)), "shape", **fields)
    # round 2: NaN
    h, b = evil.task()
    fields = dict(round=h["round"], counter=h["counter"])
    reject(honest_update(3, h, b, n, delta=torch.full_like(b.params, float("nan"))), "non-finite", **fields)
    # round 3: more examples than registered
    h, b = evil.task()
    fields = dict(round=h["round"], counter=h["counter"])
    reject(honest_update(3, h, b, n * 100), "examples", **fields)
    # round 4: a stale round, then a valid update, then a duplicate
    h, b = evil.task()
    reject(honest_update(3, h, b, n), "stale", round=0, counter=h["counter"])
    assert evil.send(honest_update(3, h, b, n), round=h["round"], counter=h["counter"]).accepted
    reject(honest_update(3, h, b, n), "duplicate", round=h["round"], counter=h["counter"])

    result = run.wait(120)
    assert result.status == "completed" and result.summary["rounds_completed"] == 4
    assert not run.client_errors
    assert result.summary["rejected_updates"] == len(reasons) == 6
    assert result.summary["dropped_updates"] == 3  # the invalid updates of the open rounds
    assert result.summary["client_updates"] == 3 * 4 + 1
    assert bool(torch.isfinite(result.params).all())
    records = run.run_dir.read_metrics()
    assert [r["round"] for r in records] == [1, 2, 3, 4] and records[-1]["wire_bytes_up"] > records[-1]["bytes_up"]


def test_a_payload_only_update_is_accepted_only_from_a_method_that_sends_one(tmp_path):
    """FedAvg needs the model update: an upload with neither 'delta' nor 'params' is
    rejected (the round goes on); the payload-only methods (Ferret, FRL) are the reverse,
    see test_same_model_as_the_simulation_for_stateful_methods_payloads_and_buffers."""
    run = LoopbackRun(config(rounds=1), out=tmp_path / "run", server_kwargs={"min_clients": 4})
    evil = Raw(run.address, run.tokens[3])
    n = int(run.exp.data.client_sizes()[3])
    evil.join(n)
    run.start_clients([0, 1, 2])
    h, b = evil.task()
    code, details = evil.rejected(honest_update(3, h, b, n, delta=None), round=h["round"], counter=h["counter"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no model update" in details, details
    result = run.wait(60)
    assert result.status == "completed" and result.summary["rejected_updates"] == 1


def test_a_client_that_vanishes_mid_round_stalls_it_no_longer_than_the_deadline(tmp_path):
    deadline = 1.5
    run = LoopbackRun(config(deadline_s=deadline, rounds=2), out=tmp_path / "run", server_kwargs={"min_clients": 3})
    silent = Raw(run.address, run.tokens[3])
    silent.join(int(run.exp.data.client_sizes()[3]))
    run.start_clients([0, 1, 2])
    h, b = silent.task()  # takes its task of round 1, then never answers
    result = run.wait(120)
    assert result.status == "completed"
    first, second = run.run_dir.read_metrics()
    assert first["late_updates"] == 1 and first["client_updates"] >= 2
    # the round waited for the deadline (a logical lower bound; 0.1 s for clock granularity),
    # and then stopped waiting: the upper bound is generous, for a loaded host
    assert deadline - 0.1 <= first["round_wall_s"] <= deadline + 30
    # the vanished client is no longer waited for: no further late update (the counts are
    # cumulative), whatever the host's speed
    assert second["late_updates"] == first["late_updates"]


def test_tls_run_and_what_a_wrong_certificate_gets(tmp_path):
    cert, key = write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    run = LoopbackRun(config(clients=3, rounds=2), out=tmp_path / "run", tls=(cert, key), server_kwargs={"min_clients": 3})
    try:
        # no TLS, and TLS with a certificate that is not the server's: no connection
        with pytest.raises(grpc.RpcError):
            Raw(run.address, None).stub.Health(pb2.HealthRequest(), timeout=3)
        other, _ = write_self_signed(tmp_path / "other.pem", tmp_path / "other-key.pem")
        with pytest.raises(grpc.RpcError):
            Raw(run.address, None, channel_credentials(other)).stub.Health(pb2.HealthRequest(), timeout=3)
        ok = Raw(run.address, None, channel_credentials(cert)).stub.Health(pb2.HealthRequest(), timeout=10)
        assert ok.status == "waiting"
        run.start_clients()
        result = run.wait(120)
        assert result.status == "completed" and not run.client_errors
        assert all(c.tasks_done == 2 for c in run.clients.values())
    finally:
        run.stop()


def test_a_model_larger_than_the_grpc_message_limit_streams_in_frames(tmp_path):
    cfg = config(clients=2, rounds=1, clients_per_round=1)
    cfg["model"]["hidden"] = [20000]  # 1.5 M parameters: 6 MB, over gRPC's 4 MiB message limit
    cfg["client"] = {"local_steps": 1, "batch_size": 16, "lr": 0.05}
    run = LoopbackRun(cfg, out=tmp_path / "run", server_kwargs={"min_clients": 2})
    assert run.exp.spec.num_params * 4 > 4 << 20
    run.start_clients()
    result = run.wait(120)
    assert result.status == "completed" and not run.client_errors
    sim = fedweave.run(cfg, out=tmp_path / "sim")
    assert torch.allclose(result.params, sim.params)
    rec = run.run_dir.read_metrics()[0]
    assert rec["wire_bytes_down"] >= rec["bytes_down"] > 4 << 20


@pytest.mark.parametrize("method, schedule", [
    ("fedasync", {"mode": "async", "concurrency": 3}),
    ("fedbuff", {"mode": "buffered", "concurrency": 3, "buffer_size": 2}),
])
def test_async_and_buffered_modes_run_on_the_wall_clock(tmp_path, method, schedule):
    cfg = config()
    cfg["method"] = {"name": method}
    cfg["schedule"] = {"rounds": 3, "clients_per_round": 2, **schedule}  # a budget of 6 arrivals
    run = LoopbackRun(cfg, out=tmp_path / "run", server_kwargs={"min_clients": 4})
    run.start_clients()
    result = run.wait(120)
    assert result.status == "completed" and not run.client_errors
    s = result.summary
    assert s["client_updates"] == 6 and s["rejected_updates"] == 0
    records = run.run_dir.read_metrics()
    merges = 6 if schedule["mode"] == "async" else 3
    assert records[-1]["version"] == merges and records[-1]["arrivals"] == 6
    assert records[-1]["staleness_max"] >= 0 and bool(torch.isfinite(result.params).all())
    assert sum(c.tasks_done for c in run.clients.values()) >= 6


@pytest.mark.parametrize("method, model", [
    ("scaffold", {}),  # per-client state across rounds, a control variate in every broadcast and update
    ("feddisco", {}),  # a label histogram in every update
    ("fedavg", {"name": "mlp_norm", "norm": "batch"}),  # BatchNorm statistics travel as buffers
    # payload-only uploads: the payload stands in for the model update
    ("ferret", {}),  # block coefficients of shared random bases
    ("frl", {}),  # per-layer edge rankings
])
def test_same_model_as_the_simulation_for_stateful_methods_payloads_and_buffers(tmp_path, method, model):
    cfg = config(clients=5, clients_per_round=3)
    cfg["method"] = {"name": method, **({"block_size": 256, "num_vectors": 16} if method == "ferret" else {})}
    cfg["model"].update(model)
    run = LoopbackRun(cfg, out=tmp_path / "run", server_kwargs={"min_clients": 5})
    run.start_clients()
    result = run.wait(120)
    assert result.status == "completed" and not run.client_errors
    sim = fedweave.run(cfg, out=tmp_path / "sim")
    assert torch.allclose(result.params, sim.params) and torch.allclose(result.buffers, sim.buffers)
    assert (result.summary["bytes_up"], result.summary["bytes_down"]) == (sim.summary["bytes_up"], sim.summary["bytes_down"])


def test_serve_command_line_errors_exit_2(tmp_path):
    from typer.testing import CliRunner

    from fedweave.cli import app

    runner = CliRunner()
    cases = [
        (["serve", "--address", "127.0.0.1:0", "--resume"], "--out"),
        (["serve", "--address", "127.0.0.1:0", "--tls-cert", str(tmp_path / "c.pem"), "--out", str(tmp_path / "r")], "--tls-key"),
        (["serve", "--address", "127.0.0.1:0", "--tokens", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")],
         "does not exist"),
        (["join", "--server", "127.0.0.1:1", "--token", "x"], "--data"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
    assert not (tmp_path / "r").exists()  # a refused command leaves no run directory behind
