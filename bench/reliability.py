"""Reliability matrix: attacks, faults and bad inputs tried against fedweave, by kind, with
their outcome (issue #20). Regenerates ``docs/results/reliability.md``.

Everything runs on this machine: deployments on 127.0.0.1 only (in-process loopback runs,
or ``fedweave serve`` / ``fedweave run`` subprocesses), every wait bounded. Each case is a
small function that returns its rows ``(what was tried, held?, detail)``; a case whose
feature is not in the tree under test (it probes for the module or function that carries
it) reports **not available** instead of failing, so the script runs on any tree, before
and after a branch that adds the feature is merged.

Usage::

    PYTHONPATH=src .venv/bin/python bench/reliability.py                 # all cases, prints the table
    PYTHONPATH=src .venv/bin/python bench/reliability.py --write docs/results/reliability.md
    PYTHONPATH=src .venv/bin/python bench/reliability.py --only faults --json out.json

Exit status: 1 if any available case failed, else 0. Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # test_deploy_server's hand-driven client

import grpc  # noqa: E402

from fedweave.deploy import fedweave_pb2 as pb2  # noqa: E402
from fedweave.deploy.loopback import LoopbackRun, free_port  # noqa: E402
from fedweave.deploy.wire import encode_update  # noqa: E402
from helpers_runs import full_disk_write  # noqa: E402
from test_deploy_server import Raw, config, health, honest_update, run_quietly  # noqa: E402

HELD, FAILED, NA = "held", "FAILED", "not available"


@dataclass
class Row:
    kind: str
    what: str
    outcome: str
    detail: str = ""


@dataclass
class Case:
    kind: str
    title: str
    fn: Callable[[Path], list[tuple[str, bool, str]]]
    requires: Callable[[], str | None] | None = None


CASES: list[Case] = []
_PARTIAL: list = []


def partial() -> list:
    """The rows of the running case (kept when the case breaks part-way)."""
    _PARTIAL.clear()
    return _PARTIAL


def case(kind: str, title: str, requires: Callable[[], str | None] | None = None):
    def deco(fn):
        CASES.append(Case(kind, title, fn, requires))
        return fn

    return deco


# -- probes for features that other branches add ---------------------------------------------------


def module(name: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(name) is not None else f"no {name} in this tree"


def attribute(mod: str, name: str) -> Callable[[], str | None]:
    def probe():
        try:
            m = importlib.import_module(mod)
        except ImportError:
            return f"no {mod}"
        return None if hasattr(m, name) else f"no {mod}.{name} in this tree"

    return probe


RUNDIR_LOCK = attribute("fedweave.rundir", "RunDirectoryBusy")  # exclusive run-directory lock
DEGENERATE = attribute("fedweave.metrics", "degenerate_reason")
SERVE_OPTIONS = module("fedweave.deploy.options")  # serve options checked before the run directory
CLIENT_VIEW = module("fedweave.deploy.client_view")  # Join sends only the client's config
SESSIONS = module("fedweave.deploy.sessions")
PAYLOADS = module("fedweave.methods.payloads")
# the bad-input checks, SIGTERM for `fedweave run`, full disk and TLS reports came in one
# branch with the serve option checks: its module marks them
INPUT_CHECKS = SERVE_OPTIONS


# -- helpers ----------------------------------------------------------------------------------------


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def fedweave_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedweave.cli", *args]


def code_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def frames_with(enc, change: Callable[[dict], dict] | None = None, extra_data: bytes = b""):
    out = []
    for i, (h, d) in enumerate(enc.frames(1 << 20)):
        if i == 0 and change is not None:
            h = json.dumps(change(json.loads(h))).encode()
        out.append(pb2.Frame(header=h, data=bytes(d)))
    if extra_data:
        out.append(pb2.Frame(data=extra_data))
    return out


def send_frames(raw: Raw, frames) -> tuple[grpc.StatusCode, str]:
    try:
        raw.stub.SendUpdate(iter(frames), metadata=raw.md, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, "accepted"


class LogText(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.buf = io.StringIO()

    def emit(self, record):
        self.buf.write(self.format(record) + "\n")


TINY = ["--set", "data.partition.num_clients=4", "--set", "schedule.clients_per_round=4", "--set", "model.hidden=[16]",
        "--set", "client.epochs=1"]


# -- unauthenticated, malformed, replayed, oversized uploads ---------------------------------------------


@case("uploads", "unauthenticated, malformed, replayed and oversized uploads")
def uploads(tmp: Path):
    rows = partial()
    logs = LogText()
    logging.getLogger("fedweave.deploy").addHandler(logs)
    run = LoopbackRun(config(rounds=7, deadline_s=30), out=tmp / "run", server_kwargs={"min_clients": 4})
    try:
        for label, token in (("no token", None), ("an unknown token", "fwt_" + "x" * 43),
                             ("a valid token plus one character", run.tokens[0] + "x")):
            raw = Raw(run.address, token)
            codes = [code_of(lambda: raw.join(10)),
                     code_of(lambda: list(raw.stub.GetTask(pb2.TaskRequest(wait_ms=10), metadata=raw.md, timeout=10))),
                     code_of(lambda: raw.stub.SendUpdate(iter([pb2.Frame(header=b"{}")]), metadata=raw.md, timeout=10))]
            rows.append((f"Join, GetTask, SendUpdate with {label}", all(c == grpc.StatusCode.UNAUTHENTICATED for c in codes),
                         "UNAUTHENTICATED ×3"))
        evil = Raw(run.address, run.tokens[3])
        n = int(run.exp.data.client_sizes()[3])
        code = code_of(lambda: evil.join(n * 1000))
        rows.append(("Join claiming 1000× its examples", code == grpc.StatusCode.INVALID_ARGUMENT, str(code)))
        evil.join(n)
        run.start_clients([0, 1, 2])
        inv = grpc.StatusCode.INVALID_ARGUMENT

        def bad(label, frames, words, expect=inv):
            code, details = send_frames(evil, frames)
            rows.append((label, code == expect and words in details, f"{code.name}: {details[:70]}"))

        def task():
            h, b = evil.task()
            return h, b, dict(round=h["round"], counter=h["counter"])

        # round 1: rejections before the update is claimed (the client may still send one), then one after
        h, b, f = task()
        ok = encode_update(honest_update(3, h, b, n), **f)
        bad("header that is not JSON", [pb2.Frame(header=b"{not json")], "not valid JSON")
        bad("another protocol version", frames_with(ok, lambda x: {**x, "protocol": "fedweave-deploy/0"}), "protocol")
        bad("an update claiming another client's id", frames_with(encode_update(honest_update(2, h, b, n), **f)),
            "bound to client 3")
        bad("declared size of 1 TB (above the cap)", frames_with(ok, lambda x: {**x, "data_bytes": 10**12}), "limit")
        bad("a gRPC message of 6 MiB (above the 5.06 MiB limit)", [pb2.Frame(header=b"{}", data=b"\0" * (6 << 20))], "",
            grpc.StatusCode.RESOURCE_EXHAUSTED)
        bad("a round index in the future", frames_with(encode_update(honest_update(3, h, b, n), round=h["round"] + 3,
                                                                     counter=h["counter"])), "stale")
        bad("more bytes than declared", frames_with(ok, extra_data=b"\0" * 64), "")
        h, b, f = task()
        bad("a tensor of a dtype outside the allow-list", frames_with(encode_update(honest_update(3, h, b, n), **f),
            lambda x: {**x, "tensors": [{**t, "dtype": "complex64"} for t in x["tensors"]]}), "dtype")
        h, b, f = task()
        bad("a delta of the wrong shape", frames_with(encode_update(
            honest_update(3, h, b, n, delta=torch.zeros(b.params.numel() + 1)), **f)), "shape")
        h, b, f = task()
        bad("a NaN delta", frames_with(encode_update(honest_update(3, h, b, n, delta=torch.full_like(b.params, float("nan"))),
                                                     **f)), "non-finite")
        h, b, f = task()
        bad("100× the registered examples", frames_with(encode_update(honest_update(3, h, b, n * 100), **f)), "examples")
        h, b, f = task()
        accepted = encode_update(honest_update(3, h, b, n), **f)
        code, details = send_frames(evil, frames_with(accepted))
        rows.append(("a valid update (control)", code == grpc.StatusCode.OK, code.name))
        bad("the same update again (duplicate)", frames_with(accepted), "duplicate")
        h, b, f = task()
        bad("the previous round's accepted update replayed", frames_with(accepted), "stale")
        evil.send(honest_update(3, h, b, n), **f)
        result = run.wait(180)
        rows.append(("the run completes meanwhile", result.status == "completed" and result.summary["rounds_completed"] == 7,
                     f"status {result.status}, {result.summary['rejected_updates']} rejected"))
        text = logs.buf.getvalue()
        rows.append(("token text never logged", all(t not in text for t in run.tokens.values()) and "UNAUTHENTICATED" in text,
                     f"{text.count('UNAUTHENTICATED')} UNAUTHENTICATED log lines, no token"))
    finally:
        logging.getLogger("fedweave.deploy").removeHandler(logs)
        run.stop()
    return rows


# -- a client with a valid token cannot stall the run --------------------------------------------------


def _never_sends(hold):
    hold.wait(60)
    return
    yield


@case("streams", "idle upload streams with a valid token", requires=SESSIONS)
def idle_streams(tmp: Path):
    from fedweave.deploy.sessions import MAX_UPLOADS_PER_CLIENT, SESSION_METADATA

    rows = partial()
    idle_s = 3.0
    run = LoopbackRun(config(clients=2, rounds=100000), out=tmp / "run",
                      server_kwargs={"min_clients": 2, "stream_idle_s": idle_s})
    hold = threading.Event()
    try:
        run.start_clients()
        end = time.monotonic() + 60
        while health(run.address, 10).round < 3 and time.monotonic() < end:
            time.sleep(0.2)
        for label, with_session in (("another process", False), ("the client's own session", True)):
            raw = Raw(run.address, run.tokens[0])
            if with_session:
                raw.md += ((SESSION_METADATA, run.clients[0].session),)
            t0 = time.monotonic()
            before = health(run.address).round
            calls = [raw.stub.SendUpdate.future(_never_sends(hold), metadata=raw.md, timeout=60) for _ in range(40)]
            answered = []
            for _ in range(4):
                time.sleep(0.5)
                s = time.monotonic()
                health(run.address)
                answered.append(time.monotonic() - s)
            for c in calls:
                try:
                    c.exception(timeout=idle_s + 15)
                except grpc.FutureTimeoutError:
                    pass
            end = time.monotonic() + 20
            while health(run.address).round < before + 3 and time.monotonic() < end:
                time.sleep(0.2)
            progressed = health(run.address).round - before
            codes = [c.code() for c in calls if c.done()]
            rows.append((f"40 frameless SendUpdate streams, client 0's token, {label}",
                         progressed >= 3 and max(answered) < 3 and len(codes) == 40 and grpc.StatusCode.OK not in codes,
                         f"Health answered in ≤ {max(answered) * 1000:.0f} ms; +{progressed} rounds in "
                         f"{time.monotonic() - t0:.1f} s; streams ended: "
                         + ", ".join(f"{sum(1 for c in codes if c == k)} {k.name}" for k in sorted(set(codes), key=str))))
        rows.append((f"at most {MAX_UPLOADS_PER_CLIENT} streams per client; idle ones end after --stream-idle-s",
                     run.server.streams.timed_out == MAX_UPLOADS_PER_CLIENT,
                     f"{run.server.streams.timed_out} ended idle after {idle_s:g} s"))
    finally:
        hold.set()
        run.stop()
    return rows


# -- method payloads ------------------------------------------------------------------------------------


def _payload_case(tmp: Path, method: str, cases, good):
    cfg = config(rounds=len(cases) + 1)
    cfg["method"] = {"name": method}
    run = LoopbackRun(cfg, out=tmp / method, server_kwargs={"min_clients": 4})
    rows = partial()
    try:
        evil = Raw(run.address, run.tokens[3])
        n = int(run.exp.data.client_sizes()[3])
        evil.join(n)
        run.start_clients([0, 1, 2])
        for label, make in cases:
            h, b = evil.task()
            payload, steps, change = make(b)
            enc = encode_update(honest_update(3, h, b, n, num_steps=steps, payload=payload), round=h["round"],
                                counter=h["counter"])
            code, details = send_frames(evil, frames_with(enc, change))
            rows.append((f"{method}: {label}", code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details[:70]}"))
        h, b = evil.task()
        code, _ = send_frames(evil, frames_with(encode_update(honest_update(3, h, b, n, payload=good(b)), round=h["round"],
                                                              counter=h["counter"])))
        result = run.wait(180)
        rows.append((f"{method}: the run completes, a valid update accepted",
                     result.status == "completed" and code == grpc.StatusCode.OK and not run.client_errors,
                     f"status {result.status}"))
    finally:
        run.stop()
    return rows


@case("payloads", "SCAFFOLD payloads", requires=PAYLOADS)
def scaffold_payloads(tmp: Path):
    return _payload_case(tmp, "scaffold", [
        ("no delta_c", lambda b: ({}, 1, None)),
        ("delta_c one entry too long", lambda b: ({"delta_c": torch.zeros(b.params.numel() + 1)}, 1, None)),
        ("delta_c a number, not a vector", lambda b: ({"delta_c": 3.0}, 1, None)),
    ], lambda b: {"delta_c": torch.zeros_like(b.params)})


@case("payloads", "FedNova step counts", requires=PAYLOADS)
def fednova_payloads(tmp: Path):
    return _payload_case(tmp, "fednova", [
        ("no num_steps", lambda b: ({}, 1, lambda x: {k: v for k, v in x.items() if k != "num_steps"})),
        ("num_steps = 1.5", lambda b: ({}, 1, lambda x: {**x, "num_steps": 1.5})),
        ("num_steps = 0", lambda b: ({}, 0, None)),
    ], lambda b: {})


@case("payloads", "q-FFL losses", requires=PAYLOADS)
def qffl_payloads(tmp: Path):
    return _payload_case(tmp, "qffl", [
        ("no qffl_loss", lambda b: ({}, 1, None)),
        ("qffl_loss a vector", lambda b: ({"qffl_loss": torch.zeros(3)}, 1, None)),
        ("qffl_loss = -1", lambda b: ({"qffl_loss": -1.0}, 1, None)),
    ], lambda b: {"qffl_loss": 0.5})


@case("payloads", "FedDisco label histograms", requires=PAYLOADS)
def feddisco_payloads(tmp: Path):
    return _payload_case(tmp, "feddisco", [
        ("no label_hist", lambda b: ({}, 1, None)),
        ("label_hist with 11 classes of 10", lambda b: ({"label_hist": torch.ones(11)}, 1, None)),
        ("label_hist with a negative count", lambda b: ({"label_hist": torch.tensor([-1.0] + [1.0] * 9)}, 1, None)),
    ], lambda b: {"label_hist": torch.ones(10)})


# -- sessions -----------------------------------------------------------------------------------------


@case("sessions", "a second live session with the same token", requires=SESSIONS)
def duplicate_session(tmp: Path):
    logs = LogText()
    logging.getLogger("fedweave.deploy").addHandler(logs)
    run = LoopbackRun(config(clients=3, rounds=100000), out=tmp / "run", server_kwargs={"min_clients": 3})
    try:
        run.start_clients(give_up_s=3)
        end = time.monotonic() + 60
        while health(run.address, 10).round < 1 and time.monotonic() < end:
            time.sleep(0.1)
        second = run.client(0, give_up_s=3)
        ended: list = []  # after the stop it gives up reconnecting
        t = threading.Thread(target=lambda: ended.append(run_quietly(second)), daemon=True)
        t.start()
        end = time.monotonic() + 60
        while (second.tasks_done < 3 or 0 not in run.client_errors) and time.monotonic() < end:
            time.sleep(0.1)
        errors = dict(run.client_errors)
        run.stop()
        result = run.wait(60)
        t.join(30)
        text = logs.buf.getvalue()
        err = str(errors.get(0, ""))
        ok = (result.status == "interrupted" and "superseded" in err and "supersedes the live session" in text
              and "client 0: superseded" in text and second.tasks_done >= 3)
        return [("a second process joins with client 0's token", ok,
                 "the newer session supersedes the first; the server and the first client log it; the first stops")]
    finally:
        logging.getLogger("fedweave.deploy").removeHandler(logs)
        run.stop()


# -- faults ---------------------------------------------------------------------------------------------


@case("faults", "a dead client when every client is needed (deadline 1.5 s)", requires=SESSIONS)
def dead_client(tmp: Path):
    rows = partial()
    deadline = 1.5
    run = LoopbackRun(config(clients=3, rounds=4, deadline_s=deadline), out=tmp / "run")
    try:
        dead = Raw(run.address, run.tokens[2])
        dead.join(int(run.exp.data.client_sizes()[2]))
        t0 = time.monotonic()
        run.start_clients([0, 1])
        dead.task()
        result = run.wait(60)
        took = time.monotonic() - t0
        rows.append(("client 2 takes its round-1 task and dies; --min-clients = all 3",
                     result.status == "completed" and result.summary["rounds_completed"] == 4,
                     f"4 rounds in {took:.1f} s (stall: one deadline), then 2 clients per round"))
    finally:
        run.stop()
    run = LoopbackRun(config(clients=3, rounds=4, deadline_s=1.0), out=tmp / "quorum", server_kwargs={"quorum": 3})
    try:
        dead = Raw(run.address, run.tokens[2])
        dead.join(int(run.exp.data.client_sizes()[2]))
        run.start_clients([0, 1])
        dead.task()
        result = run.wait(60)
        ckpt = run.run_dir.load_checkpoint()
        rows.append(("the same with --quorum 3", result.status == "stalled" and ckpt is not None and int(ckpt["round"]) == 1,
                     f"status {result.status}, checkpoint after round {int(ckpt['round']) if ckpt else None}"))
    finally:
        run.stop()
    return rows


@case("faults", "a deployment whose every update is non-finite")
def all_nan(tmp: Path):
    cfg = config(clients=2, rounds=3)
    cfg["client"]["lr"] = 1e30
    run = LoopbackRun(cfg, out=tmp / "run", server_kwargs={"min_clients": 2})
    try:
        run.start_clients()
        result = run.wait(120)
        import fedweave

        sim = fedweave.run(cfg, out=tmp / "sim")
        return [("client.lr = 1e30: deployment and simulation end the same way",
                 result.status == sim.status == "diverged", f"deployed {result.status}, simulated {sim.status}")]
    finally:
        run.stop()


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_time_s", "round_wall_s")}
            for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _wait_for_lines(path: Path, n: int, proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)


@case("faults", "kill -9 of `fedweave run`, then --resume")
def kill9_resume(tmp: Path):
    args = [*TINY, "--set", "schedule.rounds=30"]
    ref = subprocess.run(fedweave_cmd("run", "--quiet", "--out", str(tmp / "ref"), *args), env=env(),
                         capture_output=True, text=True, timeout=300)
    out = tmp / "run"
    proc = subprocess.Popen(fedweave_cmd("run", "--quiet", "--out", str(out), *args), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines(out / "metrics.jsonl", 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = len(_records(out))
    res = subprocess.run(fedweave_cmd("run", "--quiet", "--resume", str(out)), env=env(), capture_output=True, text=True,
                         timeout=300)
    same = res.returncode == 0 and ref.returncode == 0 and _records(out) == _records(tmp / "ref")
    return [("SIGKILL after a few rounds, then `fedweave run --resume`", same,
             f"killed after {killed_at} records; resumed run's records equal an uninterrupted run's")]


@case("faults", "SIGTERM to `fedweave serve`")
def sigterm_serve(tmp: Path):
    port = free_port()
    out = tmp / "serve"
    proc = subprocess.Popen(fedweave_cmd("serve", "--address", f"127.0.0.1:{port}", "--out", str(out), *TINY,
                                         "--set", "schedule.rounds=100000", "--min-clients", "2",
                                         "--set", "data.partition.num_clients=2", "--set", "schedule.clients_per_round=2"),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from fedweave.deploy.client import DeployClient

    tokens = {}
    end = time.monotonic() + 120
    while len(tokens) < 2 and time.monotonic() < end:
        line = proc.stdout.readline()
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            tokens[int(parts[0])] = parts[1]
    cfg = out / "config.yaml"
    clients = [DeployClient(f"127.0.0.1:{port}", tokens[i], partition=i, config=str(cfg), give_up_s=5, poll_ms=1000)
               for i in range(2)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    _wait_for_lines(out / "metrics.jsonl", 3, proc)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    ok = proc.returncode == 0 and summary.get("status") == "interrupted" and (out / "checkpoint.pt").exists()
    return [("SIGTERM mid-run", ok, f"exit {proc.returncode}, status {summary.get('status')}, checkpoint kept")]


@case("faults", "SIGTERM to `fedweave run`", requires=INPUT_CHECKS)
def sigterm_run(tmp: Path):
    out = tmp / "run"
    proc = subprocess.Popen(fedweave_cmd("run", "--quiet", "--out", str(out), *TINY, "--set", "schedule.rounds=400"),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(out / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    ok = summary.get("status") == "interrupted" and (out / "checkpoint.pt").exists() and "Traceback" not in err
    return [("SIGTERM mid-run", ok, f"exit {proc.returncode}, status {summary.get('status')}, checkpoint kept")]


@case("faults", "two `--resume` of one run directory at once", requires=RUNDIR_LOCK)
def concurrent_resume(tmp: Path):
    out = tmp / "run"
    args = [*TINY, "--set", "schedule.rounds=40"]
    proc = subprocess.Popen(fedweave_cmd("run", "--quiet", "--out", str(out), *args), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines(out / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    procs = [subprocess.Popen(fedweave_cmd("run", "--quiet", "--resume", str(out)), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        p.communicate(timeout=300)
    codes = sorted(p.returncode for p in procs)
    rounds = [r["round"] for r in _records(out)]
    return [("two resumes started together", codes == [0, 2] and rounds == list(range(1, 41)),
             f"exit codes {codes}; each round recorded once")]


@case("faults", "a full disk while writing records", requires=INPUT_CHECKS)
def full_disk(tmp: Path):
    import fedweave
    from fedweave.errors import FedweaveError

    cfg = {"data": {"partition": {"num_clients": 4}}, "model": {"hidden": [16]}, "schedule": {"rounds": 5,
                                                                                              "clients_per_round": 4}}
    real = os.write
    os.write = full_disk_write(2, real)  # ENOSPC on the third record
    message = ""
    try:
        fedweave.run(cfg, out=tmp / "run")
    except FedweaveError as exc:
        message = str(exc)
    except OSError as exc:
        message = f"untyped {exc!r}"
    finally:
        os.write = real
    lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
    whole = all(json.loads(x) for x in lines)
    resumed = fedweave.resume(tmp / "run")
    ok = "full" in message and whole and resumed.status == "completed"
    return [("ENOSPC on the third record", ok, f"{len(lines)} whole lines, a typed message, resume completes")]


@case("faults", "a run that trains to chance with an exploding loss", requires=DEGENERATE)
def degenerate(tmp: Path):
    res = subprocess.run(fedweave_cmd("run", "--quiet", "--out", str(tmp / "run"), *TINY, "--set", "schedule.rounds=3",
                                      "--set", "client.lr=1e8"), env=env(), capture_output=True, text=True, timeout=300)
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    flagged = "degenerate" in json.dumps(summary) or "degenerate" in res.stdout
    return [("client.lr = 1e8", flagged, f"status {summary.get('status')}; flagged as degenerate")]


# -- bad CLI / config input and bad data files -------------------------------------------------------


def _cli(args: list[str], tmp: Path, must_not_exist: Path | None = None) -> tuple[bool, str]:
    res = subprocess.run(fedweave_cmd(*args), env=env(), capture_output=True, text=True, timeout=180, cwd=tmp)
    text = res.stdout + res.stderr
    ok = res.returncode == 2 and "Traceback" not in text and (must_not_exist is None or not must_not_exist.exists())
    first = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return ok, f"exit {res.returncode}: {first[:90]}"


def _bad_inputs(tmp: Path, items) -> list[tuple[str, bool, str]]:
    rows = partial()
    for label, make in items:
        d = tmp / f"c{len(rows)}"
        d.mkdir()
        args, gone = make(d)
        ok, detail = _cli(args, d, gone)
        rows.append((label, ok, detail))
    return rows


def _npz(d: Path, **arrays) -> str:
    p = d / "data.npz"
    np.savez(p, **arrays)
    return str(p)


X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
Y = np.arange(40) % 3


def _npz_run(arrays) -> Callable[[Path], tuple[list[str], Path]]:
    def make(d: Path):
        path = _npz(d, **arrays)
        return ["run", "--quiet", "--out", str(d / "run"), "--set", "data.dataset=npz", "--set", f"data.root={path}",
                "--set", "data.partition.num_clients=2", "--set", "schedule.rounds=1"], d / "run"

    return make


def _run_with(*sets: str) -> Callable[[Path], tuple[list[str], Path]]:
    return lambda d: (["run", "--quiet", "--out", str(d / "run"), *[a for s in sets for a in ("--set", s)]], d / "run")


@case("input", "bad CLI and config input (checks present before issue #20)")
def bad_input_old(tmp: Path):
    return _bad_inputs(tmp, [
        ("an unknown config key", _run_with("schedule.roundz=3")),
        ("schedule.rounds = -1", _run_with("schedule.rounds=-1")),
        ("an unknown method", _run_with("method.name=nosuch")),
        ("a config file that does not exist", lambda d: (["run", str(d / "missing.yaml"), "--out", str(d / "run")], d / "run")),
        ("serve --resume without --out", lambda d: (["serve", "--address", "127.0.0.1:0", "--resume"], None)),
        ("serve --tls-cert without --tls-key", lambda d: (["serve", "--tls-cert", str(d / "c.pem"), "--out", str(d / "run")],
                                                          d / "run")),
        ("serve --tokens FILE that does not exist", lambda d: (["serve", "--tokens", str(d / "no.json"), "--out",
                                                                str(d / "run")], d / "run")),
    ])


@case("input", "bad CLI and config input (issue #20's list)", requires=INPUT_CHECKS)
def bad_input_new(tmp: Path):
    def garbage_yaml(d):
        (d / "bad.yaml").write_bytes(bytes(range(256)) * 4)
        return ["run", str(d / "bad.yaml"), "--out", str(d / "run")], d / "run"

    def out_is_file(d):
        (d / "file").write_text("x")
        return ["run", "--out", str(d / "file" / "run")], None

    def tokens_inside_file(d):
        (d / "file").write_text("x")
        return ["tokens", "new", "--clients", "2", "--out", str(d / "file" / "tokens.json")], None

    def serve(*extra):
        return lambda d: (["serve", "--out", str(d / "run"), *extra], d / "run")

    def nonpem(d):
        (d / "k.pem").write_text("not a key")
        (d / "c.pem").write_text("not a cert")
        return ["serve", "--tls-cert", str(d / "c.pem"), "--tls-key", str(d / "k.pem"), "--out", str(d / "run")], d / "run"

    return _bad_inputs(tmp, [
        ("a YAML file of binary garbage", garbage_yaml),
        ("--out inside an existing file", out_is_file),
        ("tokens new --out inside a file", tokens_inside_file),
        ("client.lr = .inf", _run_with("client.lr=.inf")),
        ("schedule.rounds = true", _run_with("schedule.rounds=true")),
        ("a model.roles pattern matching no parameter", _run_with("model.roles={'nosuch.*': personal}")),
        ("a run name containing '/'", _run_with("name=../../escape")),
        ("serve --address 127.0.0.1:99999", serve("--address", "127.0.0.1:99999")),
        ("serve --address notanaddress", serve("--address", "notanaddress")),
        ("serve --frame-bytes 0", serve("--address", "127.0.0.1:0", "--frame-bytes", "0")),
        ("serve --min-clients 0", serve("--address", "127.0.0.1:0", "--min-clients", "0")),
        ("serve --join-timeout -1", serve("--address", "127.0.0.1:0", "--join-timeout", "-1")),
        ("serve with a non-PEM key", nonpem),
    ])


@case("data", "bad npz data files (checks present before issue #20)")
def bad_data_old(tmp: Path):
    return _bad_inputs(tmp, [
        ("npz without y", _npz_run({"x": X})),
        ("npz with fewer labels than inputs", _npz_run({"x": X, "y": Y[:10]})),
        ("data.root that does not exist", lambda d: (["run", "--quiet", "--out", str(d / "run"), "--set", "data.dataset=npz",
                                                      "--set", f"data.root={d / 'none.npz'}"], d / "run")),
        ("a file that is not an npz", lambda d: ((d / "x.npz").write_text("hello") and None) or
         (["run", "--quiet", "--out", str(d / "run"), "--set", "data.dataset=npz", "--set", f"data.root={d / 'x.npz'}"],
          d / "run")),
    ])


@case("data", "bad npz data files (issue #20's list)", requires=INPUT_CHECKS)
def bad_data_new(tmp: Path):
    big = Y.astype(np.int64).copy()
    big[0] = 2**40
    return _bad_inputs(tmp, [
        ("npz with a label of 2^40", _npz_run({"x": X, "y": big})),
        ("npz with complex-valued inputs", _npz_run({"x": X.astype(np.complex64), "y": Y})),
        ("npz with test labels outside the training classes",
         _npz_run({"x": X, "y": Y, "x_test": X[:5], "y_test": np.full(5, 7)})),
    ])


# -- TLS --------------------------------------------------------------------------------------------------


@case("tls", "TLS mismatches")
def tls(tmp: Path):
    from fedweave.deploy.tls import channel_credentials, write_self_signed

    cert, key = write_self_signed(tmp / "cert.pem", tmp / "key.pem")
    other, _ = write_self_signed(tmp / "other.pem", tmp / "other-key.pem")
    run = LoopbackRun(config(clients=2, rounds=1), out=tmp / "run", tls=(cert, key), server_kwargs={"min_clients": 2})
    rows = partial()
    try:
        plain = code_of(lambda: Raw(run.address, None).stub.Health(pb2.HealthRequest(), timeout=3))
        wrong = code_of(lambda: Raw(run.address, None, channel_credentials(other)).stub.Health(pb2.HealthRequest(), timeout=3))
        right = code_of(lambda: Raw(run.address, None, channel_credentials(cert)).stub.Health(pb2.HealthRequest(), timeout=10))
        rows.append(("a plain-text client against a TLS server", plain != grpc.StatusCode.OK, str(plain)))
        rows.append(("a client trusting another CA", wrong != grpc.StatusCode.OK, str(wrong)))
        rows.append(("a client trusting the server's certificate (control)", right == grpc.StatusCode.OK, str(right)))
    finally:
        run.stop()
    return rows


@case("tls", "what `join` says about a TLS mismatch, and the key file's mode", requires=INPUT_CHECKS)
def tls_reports(tmp: Path):
    from fedweave.deploy.client import ClientError, DeployClient
    from fedweave.deploy.tls import write_self_signed

    cert, key = write_self_signed(tmp / "cert.pem", tmp / "key.pem")
    other, _ = write_self_signed(tmp / "other.pem", tmp / "other-key.pem")
    mode = os.stat(key).st_mode & 0o777
    run = LoopbackRun(config(clients=2, rounds=1), out=tmp / "run", tls=(cert, key), server_kwargs={"min_clients": 2})
    try:
        t0 = time.monotonic()
        message = ""
        try:
            DeployClient(run.address, run.tokens[0], root_ca=other, partition=0, dataset=run.exp.data, give_up_s=60).run()
        except ClientError as exc:
            message = str(exc)
        took = time.monotonic() - t0
    finally:
        run.stop()
    return [("join trusting another CA", ("TLS" in message or "certificate" in message) and took < 30,
             f"said after {took:.1f} s: {message[:80]}"),
            ("the TLS key file's mode", mode == 0o600, f"{mode:o}")]


@case("uploads", "what the Join reply carries", requires=CLIENT_VIEW)
def join_reply(tmp: Path):
    cfg = config(clients=2, rounds=1)
    cfg["output"] = {"mlflow_tracking_uri": "https://user:secret@mlflow.example"}
    try:
        run = LoopbackRun(cfg, out=tmp / "run", server_kwargs={"min_clients": 2})
    except Exception as exc:  # an output key this tree does not have
        return [("Join reply leaves out output.*", False, f"could not build the run: {exc}")]
    try:
        reply = Raw(run.address, run.tokens[0]).join(int(run.exp.data.client_sizes()[0]))
        held = "secret" not in reply.config_yaml and str(run.run_dir.path) not in reply.config_yaml
        return [("an MLflow URI with credentials and the run directory in output.*", held,
                 "neither reaches the client (output.* goes out as defaults)")]
    finally:
        run.stop()


# -- running and writing the page ----------------------------------------------------------------------------


def run_cases(only: list[str] | None) -> list[Row]:
    rows: list[Row] = []
    for c in CASES:
        if only and c.kind not in only:
            continue
        missing = c.requires() if c.requires else None
        if missing:
            rows.append(Row(c.kind, c.title, NA, missing))
            print(f"[{c.kind}] {c.title}: not available ({missing})", flush=True)
            continue
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fedweave-reliability-") as tmp:
            _PARTIAL.clear()
            try:
                got = list(c.fn(Path(tmp)))
            except Exception as exc:  # a case that broke is a failure of what it tried
                got = [*_PARTIAL, (c.title, False, f"broke: {type(exc).__name__}: {exc}".splitlines()[0][:160])]
                traceback.print_exc()
        for what, held, detail in got:
            rows.append(Row(c.kind, what, HELD if held else FAILED, detail))
        print(f"[{c.kind}] {c.title}: {sum(1 for _, h, _ in got if h)}/{len(got)} held ({time.monotonic() - t0:.1f} s)",
              flush=True)
    return rows


KINDS = {
    "uploads": "Unauthenticated, malformed, replayed and oversized uploads",
    "streams": "Idle streams with a valid token",
    "payloads": "Method payloads that do not fit the method",
    "sessions": "Duplicate sessions",
    "faults": "Faults: dead clients, kill -9, SIGTERM, concurrent resume, full disk, degenerate runs",
    "input": "Bad CLI and config input (exit 2, one paragraph, no run directory, no traceback)",
    "data": "Bad data files (exit 2, one paragraph, no run directory, no traceback)",
    "tls": "TLS",
}


def page(rows: list[Row], note: str) -> str:
    out = ["# Reliability: attacks, faults and bad inputs", "",
           "What was tried against fedweave and what happened, by kind (issue #20). Regenerate with",
           "`PYTHONPATH=src .venv/bin/python bench/reliability.py --write docs/results/reliability.md`",
           "(loopback only, bounded waits, a few minutes on 2 cores). A case whose feature is not in the tree",
           "reports *not available*.", "", note, "", "| kind | tried | held | failed | not available |", "|---|---|---|---|---|"]
    for kind, title in KINDS.items():
        mine = [r for r in rows if r.kind == kind]
        if mine:
            out.append(f"| {title} | {len(mine)} | {sum(r.outcome == HELD for r in mine)} | "
                       f"{sum(r.outcome == FAILED for r in mine)} | {sum(r.outcome == NA for r in mine)} |")
    for kind, title in KINDS.items():
        mine = [r for r in rows if r.kind == kind]
        if not mine:
            continue
        out += ["", f"## {title}", "", "| tried | outcome | detail |", "|---|---|---|"]
        out += [f"| {r.what} | {r.outcome} | {r.detail.replace('|', '/')} |" for r in mine]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(KINDS), help="run only these kinds")
    ap.add_argument("--write", type=Path, help="write the Markdown page here")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--note", default="", help="a line for the page (which tree, which machine)")
    ap.add_argument("--keep", type=Path, help="a --json file of an earlier run: its rows of the kinds not rerun are kept")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for h in logging.getLogger().handlers:  # the console gets errors only; the cases read the deploy logs
        h.setLevel(logging.ERROR)
    logging.getLogger("fedweave.deploy").setLevel(logging.INFO)
    torch.set_num_threads(1)
    rows = run_cases(args.only)
    if args.keep:  # rerun part of the matrix, keep the rest
        rerun = {r.kind for r in rows}
        kept = [Row(**r) for r in json.loads(args.keep.read_text()) if r["kind"] not in rerun]
        order = list(KINDS)
        rows = sorted(kept + rows, key=lambda r: order.index(r.kind))  # stable: case order within a kind
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    note = (f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on commit `{commit}`, load average "
            f"{os.getloadavg()[0]:.1f}. {args.note}").strip()
    text = page(rows, note)
    print(text)
    if args.write:
        args.write.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 1 if any(r.outcome == FAILED for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
