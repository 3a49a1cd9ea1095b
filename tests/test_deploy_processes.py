"""Deployments with real processes on 127.0.0.1: `fedweave serve` and `fedweave join`.

* a 3-round run with 4 client processes ends with the simulation's global model;
* SIGTERM shuts the server down cleanly (checkpoint, summary `interrupted`);
* (slow) the same run over TLS; kill -9 of the server and `--resume`, with clients that
  reconnect; a client killed mid-round.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("grpc")
pytest.importorskip("cryptography")

import fedweave  # noqa: E402
from fedweave.deploy.loopback import free_port  # noqa: E402
from fedweave.deploy.tokens import TokenStore  # noqa: E402
from helpers_subprocess import subprocess_env  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CONFIG = {
    "name": "deploy-proc", "seed": 0,
    "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "num_clients": 4, "alpha": 0.5}},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
    "schedule": {"rounds": 3, "clients_per_round": 3},
}


def _env() -> dict:
    return subprocess_env()


class Deployment:
    """A server process and client processes in ``tmp``; every process is reaped at the end."""

    def __init__(self, tmp: Path, config: dict):
        self.tmp = tmp
        self.cfg = tmp / "config.yaml"
        self.cfg.write_text(yaml.safe_dump(config))
        store, self.tokens = TokenStore.generate(config["data"]["partition"]["num_clients"])
        self.token_file = tmp / "tokens.json"
        store.save(self.token_file)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.out = tmp / "deploy"
        self.state = self.out  # where checkpoints go (--state-dir)
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[str, Path] = {}

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as f:
            p = subprocess.Popen([sys.executable, "-m", "fedweave.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.tmp, env=_env())
        self.procs.append(p)
        return p

    def server(self, *extra: str, resume: bool = False) -> subprocess.Popen:
        args = ["--address", self.address, "--tokens", str(self.token_file), "--out", str(self.out), *extra]
        args = ["serve", *args, "--resume"] if resume else ["serve", str(self.cfg), *args]
        return self._start("server", args)

    def client(self, cid: int, *extra: str) -> subprocess.Popen:
        return self._start(f"client{cid}", ["join", "--server", self.address, "--token", self.tokens[cid],
                                             "--partition", str(cid), "--config", str(self.cfg), "--give-up-s", "120", *extra])

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait(self, p: subprocess.Popen, name: str, timeout: float = 240) -> int:
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not finish in {timeout} s; its log:\n{self.log(name)[-4000:]}")

    def metrics(self) -> list[dict]:
        path = self.out / "metrics.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    def final_params(self) -> torch.Tensor:
        return torch.load(self.state / "checkpoint.pt", weights_only=False)["state"]["params"]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def deployment(tmp_path):
    made = []

    def make(config=CONFIG) -> Deployment:
        d = Deployment(tmp_path, config)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def _run_all(d: Deployment, server_extra=(), client_extra=()) -> None:
    server = d.server("--min-clients", "4", *server_extra)
    clients = [d.client(i, *client_extra) for i in range(4)]
    rc = d.wait(server, "server")
    assert rc == 0, d.log("server")[-4000:]
    for i, c in enumerate(clients):
        assert d.wait(c, f"client{i}", 60) == 0, d.log(f"client{i}")[-4000:]


def _assert_same_as_simulation(d: Deployment, config: dict, tmp: Path) -> None:
    sim = fedweave.run(config, out=tmp / "sim")
    assert torch.allclose(d.final_params(), sim.params, atol=1e-6)
    deployed, simulated = d.metrics(), sim.history
    assert [r["round"] for r in deployed] == [r["round"] for r in simulated]
    for a, b in zip(deployed, simulated):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert (a["bytes_up"], a["bytes_down"]) == (b["bytes_up"], b["bytes_down"])  # the same analytic counts
        assert a["wire_bytes_up"] > a["bytes_up"] and a["wire_bytes_down"] > a["bytes_down"]


def test_four_client_processes_end_with_the_simulations_model(deployment, tmp_path):
    d = deployment()
    _run_all(d, server_extra=("--frame-bytes", "2048"))  # the model crosses in several frames
    summary = json.loads((d.out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert summary["rejected_updates"] == 0 and summary["wire_bytes_up"] > summary["bytes_up"]
    assert (d.out / "config.yaml").is_file() and len(d.metrics()) == 3
    assert "UNENCRYPTED" in d.log("server")
    _assert_same_as_simulation(d, CONFIG, tmp_path)


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    """No --tokens: the server makes and prints them; SIGTERM while waiting for clients."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "run"
    addr = f"127.0.0.1:{free_port()}"
    with open(tmp_path / "server.log", "wb") as log:
        p = subprocess.Popen([sys.executable, "-m", "fedweave.cli", "serve", str(cfg), "--address", addr, "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=tmp_path, env=_env())
    try:
        end = time.monotonic() + 120
        while not (out / "server.json").exists() and time.monotonic() < end and p.poll() is None:
            time.sleep(0.1)
        assert (out / "server.json").exists(), (tmp_path / "server.log").read_text()
        p.send_signal(signal.SIGTERM)
        stdout, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, (tmp_path / "server.log").read_text()
    printed = [ln.split() for ln in stdout.decode().splitlines() if ln[:1].isdigit() and len(ln.split()) == 2]
    assert [int(c) for c, _ in printed] == [0, 1, 2, 3]
    store = TokenStore.load(out / "tokens.json")
    assert all(store.client_id(tok) == int(c) for c, tok in printed)
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "checkpoint.pt").is_file()
    assert "SIGTERM" in (tmp_path / "server.log").read_text()


@pytest.mark.slow
def test_four_client_processes_over_tls(deployment, tmp_path):
    from fedweave.deploy.tls import write_self_signed

    cert, key = write_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    d = deployment()
    _run_all(d, server_extra=("--tls-cert", str(cert), "--tls-key", str(key)), client_extra=("--root-ca", str(cert)))
    assert "UNENCRYPTED" not in d.log("server")
    _assert_same_as_simulation(d, CONFIG, tmp_path)


@pytest.mark.slow
def test_kill_9_and_resume_loses_nothing(deployment, tmp_path):
    """Client 3 dies in round 2, so the round waits (deadline 60 s); the server is killed with
    SIGKILL meanwhile, restarted with --resume, client 3 comes back, the others reconnect on
    their own: the run ends with the simulation's model."""
    config = {**CONFIG, "schedule": {**CONFIG["schedule"], "clients_per_round": 4, "deadline_s": 60.0}}
    d = deployment(config)
    d.state = tmp_path / "state"
    server = d.server("--min-clients", "4", "--state-dir", str(d.state))
    clients = [d.client(i) for i in range(3)] + [d.client(3, "--crash-at-round", "1")]
    end = time.monotonic() + 240
    while clients[3].poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    assert clients[3].returncode == -signal.SIGKILL, d.log("client3")
    assert len(d.metrics()) == 1  # round 1 aggregated and checkpointed; round 2 is open
    assert not (d.out / "checkpoint.pt").exists()
    ckpt = torch.load(d.state / "checkpoint.pt", weights_only=False)
    assert ckpt["round"] == 1 and set(ckpt["deploy"]["clients"]) == {0, 1, 2, 3}
    time.sleep(1.0)  # let the others upload round 2 to the doomed server
    server.kill()
    server.wait(10)
    server = d.server("--min-clients", "4", "--state-dir", str(d.state), resume=True)
    clients[3] = d.client(3)
    assert d.wait(server, "server") == 0, d.log("server")[-4000:]
    for i, c in enumerate(clients):
        assert d.wait(c, f"client{i}", 60) == 0, d.log(f"client{i}")[-4000:]
    assert "resuming after round 1" in d.log("server")
    assert [r["round"] for r in d.metrics()] == [1, 2, 3]
    _assert_same_as_simulation(d, config, tmp_path)


@pytest.mark.slow
@pytest.mark.timing
def test_a_client_killed_mid_round_stalls_it_no_longer_than_the_deadline(deployment):
    deadline = 3.0
    config = {**CONFIG, "schedule": {**CONFIG["schedule"], "clients_per_round": 4, "deadline_s": deadline}}
    d = deployment(config)
    server = d.server("--min-clients", "4")
    clients = [d.client(i) for i in range(3)] + [d.client(3, "--crash-at-round", "2")]  # SIGKILLs itself in round 3
    assert d.wait(server, "server") == 0, d.log("server")[-4000:]
    assert clients[3].wait(10) == -signal.SIGKILL
    for i in range(3):
        assert d.wait(clients[i], f"client{i}", 60) == 0, d.log(f"client{i}")[-4000:]
    records = d.metrics()
    assert [r["round"] for r in records] == [1, 2, 3]
    assert [r["late_updates"] for r in records] == [0, 0, 1]
    assert records[0]["round_wall_s"] < deadline
    assert deadline - 0.1 <= records[2]["round_wall_s"] <= deadline + 30  # generous: a loaded host
    assert json.loads((d.out / "summary.json").read_text())["status"] == "completed"
