"""Deployment hardening (issue 20): `serve` options refused before anything is created,
`join` naming a TLS mismatch at once, the TLS key never readable by others, and a Join
reply that carries only what the client needs."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

grpc = pytest.importorskip("grpc")
pytest.importorskip("cryptography")

from fedweave.cli import app  # noqa: E402
from fedweave.config import OutputConfig, SystemConfig  # noqa: E402
from fedweave.deploy import fedweave_pb2 as pb2  # noqa: E402
from fedweave.deploy import fedweave_pb2_grpc as pb2_grpc  # noqa: E402
from fedweave.deploy.client import ClientError, DeployClient  # noqa: E402
from fedweave.deploy.loopback import LoopbackRun  # noqa: E402
from fedweave.deploy.tls import write_self_signed  # noqa: E402
from fedweave.deploy.wire import PROTOCOL  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def config(clients: int = 3, rounds: int = 1) -> dict:
    return {
        "name": "harden", "seed": 0,
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "num_clients": clients, "alpha": 0.5}},
        "model": {"name": "mlp", "hidden": [8]},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
        "schedule": {"rounds": rounds, "clients_per_round": clients},
    }


# -- serve: options refused before the run directory exists and before tokens are printed ----


def _serve_cases(tmp_path: Path) -> dict:
    cert, _ = write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    fake_key = tmp_path / "fake-key.pem"
    fake_key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "port-99999": (["--address", "127.0.0.1:99999"], ["--address", "0..65535", "port 99999"]),
        "not-an-address": (["--address", "notanaddress"], ["--address", "HOST:PORT", "'notanaddress'"]),
        "frame-bytes-0": (["--frame-bytes", "0"], ["--frame-bytes", "1..4194304", "got 0"]),
        "min-clients-0": (["--min-clients", "0"], ["--min-clients", ">= 1", "got 0"]),
        "join-timeout-negative": (["--join-timeout", "-1"], ["--join-timeout", "> 0", "got -1.0"]),
        "key-not-pem": (["--tls-cert", str(cert), "--tls-key", str(fake_key)],
                        ["--tls-key", "fake-key.pem", "is not a PEM private key"]),
        "cert-not-pem": (["--tls-cert", str(fake_key), "--tls-key", str(tmp_path / "key.pem")],
                         ["--tls-cert", "is not a PEM certificate"]),
        "out-is-a-file": (["--out", str(a_file)], ["a-file", "exists and is a file"]),
    }


def _serve_refused(tmp_path, args, needles):
    """``fedweave serve ARGS`` exits 2 with every needle in its one paragraph, before any
    token is printed and without making or touching anything under ``tmp_path``."""
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    # --join-timeout 1 (unless the case sets it): code that accepted the options ends anyway
    timeout = [] if "--join-timeout" in args else ["--join-timeout", "1"]
    res = CliRunner().invoke(app, ["serve", "--quiet", *timeout, *args, "--set",
                                   "data.partition.num_clients=3", "--set", "schedule.clients_per_round=3"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and text.startswith("error:"), res.output
    for needle in needles:
        assert needle in text, (needle, text)
    assert "fwt_" not in res.output  # no tokens were made and printed
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing made, nothing touched


@pytest.mark.parametrize("case", ["port-99999", "not-an-address", "frame-bytes-0", "min-clients-0",
                                  "join-timeout-negative", "key-not-pem", "cert-not-pem", "out-is-a-file"])
def test_serve_refuses_bad_options_before_creating_anything(tmp_path, monkeypatch, case):
    args, needles = _serve_cases(tmp_path)[case]
    monkeypatch.chdir(tmp_path)
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    _serve_refused(tmp_path, [*out, *args], needles)


def test_serve_refuses_a_port_another_process_listens_on_before_creating_anything(tmp_path, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _serve_refused(tmp_path, ["--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "run")],
                       [f"127.0.0.1:{port}", "Another process holds the port", "--address"])
    assert not (tmp_path / "run").exists()


def test_serve_refuses_a_directory_holding_a_run_unless_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: earlier\n")
    (run / "metrics.jsonl").write_text('{"round": 1}\n')
    _serve_refused(tmp_path, ["--address", "127.0.0.1:0", "--out", str(run)], ["already holds a run", "--overwrite"])
    assert (run / "metrics.jsonl").read_text() == '{"round": 1}\n'
    # --overwrite replaces it: the server starts (and gives up after --join-timeout 1 with no client)
    res = CliRunner().invoke(app, ["serve", "--quiet", "--join-timeout", "1", "--address", "127.0.0.1:0", "--out",
                                   str(run), "--overwrite", "--set", "data.partition.num_clients=3",
                                   "--set", "schedule.clients_per_round=3"])
    assert "already holds a run" not in res.output
    assert "name: earlier" not in (run / "config.yaml").read_text()
    assert (run / "metrics.jsonl").read_text() != '{"round": 1}\n'


def test_tokens_new_out_inside_a_file_or_on_a_directory_exits_2(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for target, needle in ((a_file / "tokens.json", "is a file, not a directory"),
                           (tmp_path, "exists and is a directory")):
        res = CliRunner().invoke(app, ["tokens", "new", "--clients", "2", "--out", str(target), "--force"])
        assert res.exit_code == 2, res.output
        assert needle in " ".join(res.output.split()) and "Traceback" not in res.output
        assert "fwt_" not in res.output
    assert a_file.read_text() == "x"


# -- the TLS key ----------------------------------------------------------------------------------


def test_tls_key_is_created_with_mode_0600_without_a_later_chmod(tmp_path, monkeypatch):
    chmods = []
    monkeypatch.setattr(os, "chmod", lambda *a, **k: chmods.append(a))
    monkeypatch.setattr(Path, "chmod", lambda self, *a, **k: chmods.append((self, *a)))
    old = os.umask(0o022)  # the usual umask: a plain create would give 0644
    try:
        cert, key = write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not any(Path(c[0]) == key for c in chmods)
    assert b"PRIVATE KEY" in key.read_bytes() and b"CERTIFICATE" in cert.read_bytes()


# -- join: a TLS mismatch is named at once, not after give_up_s ------------------------------------


def _join_error(address: str, token: str, data, **kwargs) -> tuple[BaseException | None, float]:
    """Run a client in a thread for at most 20 s; its error and how long it took."""
    client = DeployClient(address, token, partition=0, dataset=data, give_up_s=600.0, poll_ms=500, **kwargs)
    box: dict = {}

    def main():
        t0 = time.monotonic()
        try:
            client.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc
        box["s"] = time.monotonic() - t0

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(20)
    return box.get("error"), box.get("s", float("inf"))


def test_join_names_a_tls_mismatch_or_an_untrusted_certificate_quickly(tmp_path):
    cert, key = write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    other, _ = write_self_signed(tmp_path / "other.pem", tmp_path / "other-key.pem")
    tls_run = LoopbackRun(config(), out=tmp_path / "tls", tls=(cert, key))
    plain_run = LoopbackRun(config(), out=tmp_path / "plain")
    try:
        data = tls_run.exp.data
        cases = [
            (tls_run, {}, "speaks TLS, but this client connected without it"),
            (tls_run, {"root_ca": other}, "does not trust"),
            (plain_run, {"root_ca": cert}, "does not speak TLS"),
        ]
        for run, kwargs, needle in cases:
            error, seconds = _join_error(run.address, run.tokens[0], data, **kwargs)
            assert isinstance(error, ClientError), (needle, error)
            assert needle in str(error) and run.address in str(error)
            assert seconds < 15
        # the right CA still works
        ok = DeployClient(tls_run.address, tls_run.tokens[0], partition=0, dataset=data, root_ca=cert, give_up_s=30)
        ok._connect()
        ok._join()
        assert ok.client_id == 0
        ok._channel.close()
    finally:
        tls_run.stop()
        plain_run.stop()


def test_join_keeps_retrying_a_server_that_is_only_away(tmp_path):
    from fedweave.deploy.client import tls_mismatch
    from fedweave.deploy.loopback import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens: no TLS verdict, the client retries
    assert tls_mismatch(address, False, None, "failed to connect to all addresses; Socket closed") is None
    assert tls_mismatch(address, False, None, "Connection refused") is None


# -- the Join reply -------------------------------------------------------------------------------


def test_join_reply_carries_only_what_the_client_needs(tmp_path):
    cfg = config(rounds=2)
    secret = "s3cret-password"
    cfg["output"] = {"mlflow_tracking_uri": f"https://alice:{secret}@mlflow.example.org", "tensorboard": True}
    cfg["system"] = {"profile": "tiers", "tiers": [[0.5, 1.0], [0.5, 4.0]], "dropout": 0.1}
    cfg["data"]["root"] = "/srv/private/datasets"
    cfg["eavesdropper"] = {"probability": 0.5}
    cfg["executor"] = {"threads": 1, "max_cohort": 7}
    run = LoopbackRun(cfg, out=tmp_path / "run")
    try:
        channel = grpc.insecure_channel(run.address)
        stub = pb2_grpc.FederationStub(channel)
        reply = stub.Join(pb2.JoinRequest(num_examples=1, protocol=PROTOCOL),
                          metadata=(("authorization", f"Bearer {run.tokens[0]}"),), timeout=10)
        channel.close()
        text = reply.config_yaml
        assert secret not in text and "mlflow.example.org" not in text and "/srv/private" not in text
        sent = yaml.safe_load(text)
        assert sent["output"] == OutputConfig().model_dump(mode="json")  # withheld: the defaults go out
        assert sent["system"] == SystemConfig().model_dump(mode="json")
        assert sent["eavesdropper"]["probability"] == 0.0
        assert sent["data"]["root"] is None and sent["executor"]["max_cohort"] == 64
        # what the client trains with arrives unchanged
        full = run.config.to_dict()
        for section in ("model", "task", "method", "client", "schedule", "attack", "privacy"):
            assert sent[section] == full[section], section
        assert (sent["seed"], sent["data"]["partition"], sent["executor"]["threads"]) == (0, full["data"]["partition"], 1)
        run.start_clients()
        result = run.wait(120)
        assert result.status == "completed" and not run.client_errors  # and that is enough to train
    finally:
        run.stop()
