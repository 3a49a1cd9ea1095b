"""The deployment server: a method's Strategy on the wall clock, for clients over gRPC.

A synchronous round is the simulator's round with real clients: wait until enough
clients are connected, select the cohort with :func:`fedweave.sim.sampling.select_clients`
(same seed, same round, the connected clients as candidates), configure it with the
strategy, hand every selected client its task (the broadcast, the round, the client's job
counter and the round's learning rate), collect the updates until every selected client
has answered, the first K have (over-selection), or ``schedule.deadline_s`` wall-clock
seconds have passed, then aggregate the accepted updates **in client-id order**, evaluate
and write the same run directory as a simulation. The server keeps the transport (streams,
tasks, waiting, deadlines); the bookkeeping — admission, aggregation, divergence,
evaluation on the ``eval.every`` / ``eval.every_s`` grid, commits — is the simulator's own
:class:`~fedweave.sim.ledger.RoundLedger`, on the wall clock. So with the same config and
seed, and every client connected, a deployment ends with the same global model as the
simulation, and ends the same way (``diverged`` when every update of a round was
non-finite).

Every update is validated before it can touch the model (see :meth:`DeployServer._validate`),
and the server checkpoints atomically after every aggregation, so a server killed at any
moment continues with ``--resume`` from the last completed round.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import Config, load_config
from ..core.allocator import retain_freed_memory
from ..core.errors import ConfigError, DivergedError, FedweaveError
from ..core.messages import Broadcast, Update
from ..core.observer import Observer
from ..methods.payloads import method_payload_schema, run_dims
from ..methods.registry import get_method
from ..rundir import METRICS, RunDirectory, atomic_write_text, check_output_path, dumps
from ..sim.events import WallClock
from ..sim.ledger import MERGED, RoundLedger
from .client_view import client_config_yaml
from .options import check_port_free, check_serve_options
from .sessions import (
    DEFAULT_STREAM_IDLE_S, MAX_UPLOADS_PER_CLIENT, UploadStreams, session_of, superseded_message,
)
from .tokens import TokenStore
from .wire import (
    DEFAULT_FRAME_BYTES, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MAX_TENSORS, PROTOCOL, Assembler, Encoded, WireError,
    _is_int, decode_update, dump_header, encode_broadcast,
)

log = logging.getLogger("fedweave.deploy.server")

DEPLOY_FORMAT = 1
TOKENS_FILE = "tokens.json"
SERVER_FILE = "server.json"


class DeployError(FedweaveError):
    """The deployment cannot go on (no clients, a port in use, a protocol mismatch...)."""


class _Stopped(Exception):
    """SIGTERM / SIGINT / stop(): shut down cleanly."""


class _Stalled(Exception):
    """Fewer clients than the quorum for longer than the grace: stop, resumable."""


class _ResumableWallClock(WallClock):
    """Wall-clock seconds of the run, continuing from ``start`` after a resume."""

    def __init__(self, start: float = 0.0):
        super().__init__()
        self._start -= start

    def advance_to(self, t: float) -> None:  # wall-clock time moves by itself
        pass


class WireStats(Observer):
    """Bytes that really crossed the network (serialized frames), beside the analytic ones."""

    def __init__(self):
        self._lock = threading.Lock()
        self.up = 0
        self.down = 0
        self.rejected = 0

    def add(self, up: int = 0, down: int = 0, rejected: int = 0) -> None:
        with self._lock:
            self.up += up
            self.down += down
            self.rejected += rejected

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {"wire_bytes_up": self.up, "wire_bytes_down": self.down, "rejected_updates": self.rejected}

    def evaluate(self, module, state) -> dict:
        return self.figures()

    def summary(self) -> dict:
        return self.figures()

    def state_dict(self) -> dict:
        return self.figures()

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            self.up = int(state.get("wire_bytes_up", 0))
            self.down = int(state.get("wire_bytes_down", 0))
            self.rejected = int(state.get("rejected_updates", 0))


@dataclass
class _Task:
    client_id: int
    counter: int
    round: int
    broadcast: Broadcast
    encoded: Encoded
    lr: float
    issued: float = field(default_factory=time.monotonic)  # when it was handed out (async job timeout)


@dataclass
class _Round:
    round: int
    tasks: dict[int, _Task]
    keep: int  # sync: accepted updates that close the round; async: 0 (no limit)
    deadline: float | None  # time.monotonic() value
    started: float
    received: set[int] = field(default_factory=set)  # one update per client per round, valid or not
    finished: set[int] = field(default_factory=set)  # received and judged (accepted, invalid, late or broken off)
    accepted: dict[int, Update] = field(default_factory=dict)
    # (client, update or None if the stream broke off, well-formed) of every upload that
    # finished in time, in arrival order: what the ledger admits
    events: list[tuple[int, Update | None, bool]] = field(default_factory=list)
    closed: bool = False
    expired: dict[int, int] = field(default_factory=dict)  # async: client -> counter of its timed-out job


@dataclass
class _Client:
    client_id: int
    num_examples: int
    peer: str
    last_seen: float
    joins: int = 1
    polling: int = 0
    away: bool = False  # missed a deadline: not a candidate until it calls again
    session: str = ""  # the process that speaks for the client (see deploy/sessions.py)


class DeployServer:
    """The server side of one run. ``start()`` binds the port, ``run()`` runs the rounds."""

    def __init__(
        self,
        exp,
        run_dir: RunDirectory,
        tokens: TokenStore,
        *,
        address: str = "127.0.0.1:0",
        state_dir: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        min_clients: int | None = None,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        checkpoint: dict | None = None,
        progress: Callable[[int, int, dict | None], None] | None = None,
        join_timeout_s: float | None = None,
        poll_s: float = 5.0,
        liveness_s: float = 15.0,
        done_grace_s: float = 3.0,
        max_workers: int | None = None,
        quorum: int | None = None,
        stream_idle_s: float = DEFAULT_STREAM_IDLE_S,
        job_timeout_s: float | None = None,
    ):
        cfg: Config = exp.config
        sched = cfg.schedule
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("Give both --tls-cert and --tls-key, or neither.")
        if not 1 <= frame_bytes <= MAX_FRAME_BYTES:
            raise ConfigError(f"--frame-bytes must be in [1, {MAX_FRAME_BYTES}], got {frame_bytes}.")
        self.exp, self.cfg, self.run_dir = exp, cfg, run_dir
        self.tokens = tokens
        self.address = address
        self.state_dir = RunDirectory(state_dir if state_dir is not None else run_dir.path)
        self.state_dir.path.mkdir(parents=True, exist_ok=True)
        self.tls = (tls_cert, tls_key) if tls_cert is not None else None
        self.frame_bytes = frame_bytes
        self.progress = progress
        self.join_timeout_s = join_timeout_s
        self.poll_s, self.liveness_s, self.done_grace_s = poll_s, liveness_s, done_grace_s
        n = exp.data.num_clients
        unknown = sorted(c for c in tokens.entries if c >= n)
        if unknown:
            log.warning("the token file names client ids %s beyond the run's %d clients; those tokens cannot join",
                        unknown[:5], n)
        k = sched.clients_per_round if sched.sampling != "poisson" else 1
        self.min_clients = min(min_clients if min_clients is not None else k, n)
        if self.min_clients < 1:
            raise ConfigError(f"--min-clients must be at least 1, got {min_clients}.")
        usable = len(tokens.entries) - len(unknown)
        if usable < self.min_clients:
            raise ConfigError(f"The token file has {usable} tokens for this run's clients; {self.min_clients} clients "
                              "must connect before a round starts (--min-clients). Make more tokens.")
        # after the first round, rounds go on with at least `quorum` connected clients (see _wait_for_clients)
        self.quorum = min(quorum if quorum is not None else 1, self.min_clients)
        if self.quorum < 1:
            raise ConfigError(f"--quorum must be at least 1, got {quorum}.")
        if not stream_idle_s > 0:
            raise ConfigError(f"--stream-idle-s must be a positive number of seconds, got {stream_idle_s}.")
        self.streams = UploadStreams(MAX_UPLOADS_PER_CLIENT, stream_idle_s)
        if job_timeout_s is not None and not job_timeout_s > 0:
            raise ConfigError(f"--job-timeout must be a positive number of seconds, got {job_timeout_s}.")
        # async/buffered: a job not uploaded within this many seconds frees its slot (sync rounds use deadline_s)
        self.job_timeout_s = job_timeout_s
        # every client at its caps (2 long polls, MAX_UPLOADS_PER_CLIENT uploads) still leaves threads for the others
        self.max_workers = max_workers or min(1024, (2 + MAX_UPLOADS_PER_CLIENT) * n + 16)

        self.wire = WireStats()
        exp.observers.append(self.wire)
        self.ledger = RoundLedger(exp, run_dir, _ResumableWallClock(), wall_clock=True)
        self.registry: dict[int, dict[str, Any]] = {}
        if checkpoint is not None:
            self.ledger.restore(checkpoint)
            self.registry = dict(checkpoint.get("deploy", {}).get("clients", {}))
            # the records covered by the checkpoint, whatever the file held when the server died
            atomic_write_text(run_dir.path / METRICS, "".join(dumps(r) + "\n" for r in self.ledger.committed.history))
        self.clock = _ResumableWallClock(self.ledger.committed.clock)
        self.ledger.set_clock(self.clock)
        state = self.ledger.committed.state
        self._expected = (tuple(state.params.shape), state.params.dtype, tuple(state.buffers.shape), state.buffers.dtype)
        model_bytes = state.params.numel() * state.params.element_size() + state.buffers.numel() * state.buffers.element_size()
        # what the method's clients upload beyond the standard update (SCAFFOLD's delta_c...)
        self.payload_schema = method_payload_schema(get_method(cfg.method.name), exp.strategy)
        self.payload_dims = run_dims(exp)
        # the update itself, payloads up to a few model sizes (control variates, gradients...), alignment
        self.max_update_bytes = 6 * model_bytes + (1 << 20) + 8 * MAX_TENSORS

        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._phase = "waiting"
        self._round: _Round | None = None
        self._clients: dict[int, _Client] = {}
        self._told_done: set[int] = set()
        self._short_since: float | None = None  # since when fewer than min_clients were connected (after round 1)
        self._rounds_run = 0  # rounds this process ran (the first waits for min_clients without a grace)
        self._grpc = None
        self.port: int | None = None
        self.run_id = f"{run_dir.path.name}"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> int:
        """Bind and start serving; returns the port (useful with port 0)."""
        import grpc

        from . import fedweave_pb2_grpc as pb2_grpc

        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second server on the same port is an error, not a silent split
        ]
        server = grpc.server(ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="fedweave-rpc"),
                             options=options, maximum_concurrent_rpcs=4 * self.max_workers)
        pb2_grpc.add_FederationServicer_to_server(_Servicer(self), server)
        host = self.address.rsplit(":", 1)[0].strip("[]")
        try:
            if self.tls is not None:
                from .tls import server_credentials

                port = server.add_secure_port(self.address, server_credentials(*self.tls))
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise DeployError(f"Cannot listen on {self.address}: {exc}. Is the port in use?") from None
        if not port:
            raise DeployError(f"Cannot listen on {self.address}; is the port in use?")
        server.start()
        self._grpc, self.port = server, port
        bound = f"{self.address.rsplit(':', 1)[0]}:{port}"
        if self.tls is None:
            log.warning("!" * 78)
            log.warning("TLS IS OFF: traffic to %s is UNENCRYPTED; tokens and models cross in plain text.", bound)
            if host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("This address is reachable from other machines: give --tls-cert and --tls-key.")
            log.warning("!" * 78)
        log.info("listening on %s (%s), protocol %s, %d client tokens", bound, "TLS" if self.tls else "plain",
                 PROTOCOL, len(self.tokens))
        if self.cfg.schedule.mode == "sync" and self.cfg.schedule.deadline_s is None:
            log.warning("schedule.deadline_s is not set: a selected client that dies mid-round stalls the round until "
                        "it comes back; set it (wall-clock seconds) for unattended deployments")
        if self.cfg.schedule.mode != "sync" and self.job_timeout_s is None:
            log.warning("--job-timeout is not set: a client that dies holding a job keeps its slot (of %s) until it "
                        "comes back; set it (wall-clock seconds) for unattended deployments",
                        self.cfg.schedule.concurrency or self.cfg.schedule.clients_per_round)
        atomic_write_text(self.state_dir.path / SERVER_FILE,
                          dumps({"address": bound, "port": port, "tls": self.tls is not None, "run_dir": str(self.run_dir.path)}) + "\n")
        return port

    def stop(self) -> None:
        """Ask the run to stop (safe from a signal handler): the open round is abandoned,
        the last completed round stays checkpointed."""
        self._stop.set()

    def run(self):
        """Run the remaining rounds; returns the :class:`~fedweave.experiment.RunResult`."""
        from ..experiment import RunResult, _write_summary
        from ..tracking import close_trackers, make_trackers, track_progress

        if self._grpc is None:
            self.start()
        cfg, ledger = self.cfg, self.ledger
        torch.set_num_threads(cfg.executor.threads)
        if cfg.executor.retain_memory:  # the server evaluates in large batches
            retain_freed_memory()
        trackers = make_trackers(cfg, self.run_dir.path)
        progress = track_progress(self.progress, trackers)
        ledger.start()
        status, message = "completed", None
        try:
            if cfg.schedule.mode == "sync":
                for r in range(ledger.committed.round, cfg.schedule.rounds):
                    if ledger.budget_spent():
                        break
                    record = self._sync_round(r)
                    if progress:
                        progress(r + 1, cfg.schedule.rounds, record)
            else:
                self._run_async(progress)
        except _Stopped:
            status, message = "interrupted", "stopped by a signal; continue with `fedweave serve --resume --out DIR`"
        except _Stalled as exc:
            status, message = "stalled", str(exc)
            log.error("%s", exc)
        except DivergedError as exc:
            status, message = "diverged", str(exc)
        except BaseException:
            self._shutdown("stopping")
            raise
        if status in ("interrupted", "stalled"):
            self._checkpoint()  # the last completed round (already saved; this adds the latest wire figures)
        self._shutdown("done" if status not in ("interrupted", "stalled") else "stopping")
        summary = _write_summary(self.exp, self.run_dir, ledger, status, message)
        close_trackers(trackers, summary)
        c = ledger.committed
        log.info("run %s after %d rounds: %s", status, c.round, self.run_dir.path)
        return RunResult(self.run_dir.path, summary, c.history, c.state.params, c.state.buffers)

    def _shutdown(self, phase: str) -> None:
        with self._cv:
            self._phase = phase
            self._cv.notify_all()
        if phase == "done":  # let connected clients hear that the run is over
            end = time.monotonic() + self.done_grace_s
            with self._cv:
                while time.monotonic() < end and not self._stop.is_set():
                    waiting = {c for c, info in self._clients.items() if self._is_online(info)} - self._told_done
                    if not waiting:
                        break
                    self._cv.wait(0.1)
        self.streams.stop()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait(5.0)

    # -- rounds ------------------------------------------------------------------------------
    def _is_online(self, info: _Client) -> bool:
        return not info.away and (info.polling > 0 or time.monotonic() - info.last_seen <= self.liveness_s)

    def _online(self) -> list[int]:
        return sorted(c for c, info in self._clients.items() if self._is_online(info))

    def _wait_for_clients(self) -> list[int]:
        """The connected clients, once a round may start.

        The first round this process runs waits for ``--min-clients`` (at most
        ``--join-timeout``). A later round waits for them at most a grace —
        ``schedule.deadline_s`` (``--join-timeout`` without a deadline; no limit without
        either) — counted from when fewer were connected, or from the start of the round
        in which a client missed the deadline (it has had its ``deadline_s``). After the
        grace it goes on with the connected clients if they are at least ``--quorum``, and
        otherwise stops: status ``stalled``, the last completed round checkpointed, so
        ``--resume`` continues once clients are back."""
        t0 = time.monotonic()
        said = -1
        sched = self.cfg.schedule
        grace = sched.deadline_s if sched.deadline_s is not None else self.join_timeout_s
        with self._cv:
            while True:
                if self._stop.is_set():
                    raise _Stopped
                online = self._online()
                now = time.monotonic()
                if len(online) >= self.min_clients:
                    self._short_since = None
                    return online
                if self._rounds_run and grace is not None:
                    if self._short_since is None:
                        self._short_since = now
                    if now - self._short_since >= grace:
                        if len(online) >= self.quorum:
                            log.warning("round %d: %d of the %d clients needed are connected (quorum %d): going on "
                                        "with clients %s", self.ledger.committed.round + 1, len(online),
                                        self.min_clients, self.quorum, _ids(online))
                            return online
                        raise _Stalled(
                            f"Only {len(online)} client(s) connected for {grace:g} s, fewer than the quorum of "
                            f"{self.quorum} (--quorum); stopped after round {self.ledger.committed.round} with a "
                            f"checkpoint. Continue with `fedweave serve --resume --out {self.run_dir.path}` once "
                            "clients can connect.")
                if len(online) != said:
                    log.info("waiting for clients: %d of %d connected", len(online), self.min_clients)
                    said = len(online)
                if not self._rounds_run and self.join_timeout_s is not None and now - t0 > self.join_timeout_s:
                    raise DeployError(f"Only {len(online)} of the {self.min_clients} clients needed joined within "
                                      f"{self.join_timeout_s:g} s.")
                self._cv.wait(0.25)

    def _sync_round(self, r: int) -> dict | None:
        sched, ledger = self.cfg.schedule, self.ledger
        online = self._wait_for_clients()
        book = ledger.open_round(r, np.asarray(online, dtype=np.int64))
        selected = book.selected
        encoded: dict[int, Encoded] = {}
        tasks: dict[int, _Task] = {}
        for cid in selected:
            b = book.broadcasts[cid]
            if id(b) not in encoded:  # a broadcast shared by the cohort is serialized once
                encoded[id(b)] = encode_broadcast(b)
            tasks[cid] = _Task(cid, book.job_counters[cid], r, b, encoded[id(b)], book.lr)
        now = time.monotonic()
        rnd = _Round(r, tasks, book.keep, now + sched.deadline_s if sched.deadline_s is not None else None, now)
        with self._cv:
            self._round = rnd
            self._phase = "running"
            self._cv.notify_all()
        log.info("round %d/%d: %d of %d connected clients selected: %s", r + 1, sched.rounds, len(selected),
                 len(online), _ids(selected))
        with self._cv:
            while True:
                if self._stop.is_set():
                    rnd.closed = True
                    raise _Stopped
                if (rnd.keep and len(rnd.accepted) >= rnd.keep) or len(rnd.finished) >= len(selected):
                    break
                if rnd.deadline is not None and time.monotonic() >= rnd.deadline:
                    break
                left = None if rnd.deadline is None else rnd.deadline - time.monotonic()
                self._cv.wait(0.25 if left is None else max(0.0, min(0.25, left)))
            rnd.closed = True
            events = list(rnd.events)
            missing = [cid for cid in selected if cid not in rnd.received]
            for cid in missing:
                if cid in self._clients:
                    self._clients[cid].away = True
            if missing and rnd.deadline is not None and time.monotonic() >= rnd.deadline:
                # closed by the deadline: the missing clients have had their deadline_s, no more waiting for them
                self._short_since = min(self._short_since or rnd.started, rnd.started)
            self._rounds_run += 1
        # the ledger's bookkeeping of the round, on what arrived in time, in arrival order
        for _, update, well_formed in events:
            if update is not None:
                ledger.arrive(book, update)
            ledger.admit(book, update, well_formed)
        ledger.late(book, len(selected) - len(events))  # no upload finished in time
        new_state = ledger.aggregate_round(book)
        record = ledger.commit_round(book, new_state, {"round_wall_s": time.monotonic() - rnd.started})
        self._checkpoint()
        metric = self.exp.task.metric_name
        log.info("round %d/%d done in %.2f s: %d accepted, %d rejected, %d missing%s", r + 1, sched.rounds,
                 time.monotonic() - rnd.started, len(book.accepted), len(events) - len(book.accepted), len(missing),
                 f", {metric} {record[metric]:.4f}" if record is not None else "")
        return record

    def _run_async(self, progress) -> None:
        """Asynchronous and buffered modes on the wall clock, as the simulator runs them:
        ``concurrency`` clients busy (an idle connected client picked with the simulator's
        dispatch rule fills each free slot), every valid arrival merged at once
        (``on_update``) or buffered and merged ``buffer_size`` at a time in client-id
        order, evaluation every ``eval.every`` versions or on the ``eval.every_s``
        (wall-clock seconds) grid — the ledger's rules. Jobs in flight when the server
        stops are not in the checkpoint: after ``--resume`` they are dispatched anew
        (arrival order is wall-clock order, so these modes are not bit-reproducible
        anyway)."""
        cfg, ledger = self.cfg, self.ledger
        sched, ctx = cfg.schedule, ledger.ctx
        if ledger.committed.done:
            return
        concurrency = min(sched.concurrency or sched.clients_per_round, ctx.num_clients)
        max_arrivals = sched.max_arrivals or (None if sched.max_time_s else sched.rounds * sched.clients_per_round)
        rnd = _Round(-1, {}, 0, None, time.monotonic())
        with self._cv:
            self._round = rnd

        live = ledger.begin_async()
        live.busy = set()  # jobs in flight before a restart are not waited for: always rnd.tasks' clients
        totals = live.totals

        def evaluate(at: float | None = None) -> None:
            record = ledger.evaluate_live(live, at)
            if progress:
                progress(totals.arrivals, max_arrivals or 0, record)

        def dispatch() -> None:
            with self._cv:
                online = self._online()
                while len(rnd.tasks) < concurrency:
                    idle = [i for i in online if i not in rnd.tasks]
                    if not idle:
                        return
                    cid, counter, b, _ = ledger.dispatch(live, idle)
                    rnd.tasks[cid] = _Task(cid, counter, live.round, b, encode_broadcast(b), float(ctx.round_lr))
                self._cv.notify_all()

        self._wait_for_clients()
        with self._cv:
            self._phase = "running"
        log.info("%s mode: %d clients busy at a time%s", sched.mode, concurrency,
                 f", merging every {sched.buffer_size or sched.clients_per_round} arrivals"
                 if sched.mode == "buffered" else "")
        while max_arrivals is None or totals.arrivals < max_arrivals:
            if ledger.budget_spent():
                break
            while (at := ledger.next_grid_point(live, self.clock.now())) is not None:
                evaluate(at)
            dispatch()
            with self._cv:
                if self._stop.is_set():
                    raise _Stopped
                if not rnd.events:
                    self._cv.wait(0.25)
                events, rnd.events = rnd.events, []
                for cid, _, _ in events:  # the slot is free; the client may take a new task
                    rnd.tasks.pop(cid, None)
                    live.busy.discard(cid)
                    rnd.received.discard(cid)
                    rnd.finished.discard(cid)
                    rnd.accepted.pop(cid, None)
                    rnd.expired.pop(cid, None)
                if self.job_timeout_s is not None:
                    self._expire_jobs(rnd, live)
            for cid, update, well_formed in events:
                if update is not None:
                    ledger.arrive(live, update)
                if ledger.admit_async(live, update, well_formed) == MERGED:
                    if ledger.evaluation_due(live):
                        evaluate()
                    else:
                        ledger.commit_live(live)
                    self._checkpoint()
                if max_arrivals is not None and totals.arrivals >= max_arrivals:
                    break
        with self._cv:
            rnd.closed = True  # jobs still in flight arrive late
        record = ledger.finish_async(live)
        if record is not None and progress:
            progress(totals.arrivals, max_arrivals or 0, record)
        self._checkpoint()

    def _expire_jobs(self, rnd: _Round, live) -> None:
        """Async/buffered (under ``self._cv``): a job whose upload has not begun
        ``--job-timeout`` seconds after it was handed out frees its slot; it counts as a
        late update, and its client is set aside until it calls again (as a client that
        misses a sync round's deadline). An upload that comes for it later is late."""
        now = time.monotonic()
        for cid, task in list(rnd.tasks.items()):
            if cid in rnd.received or now - task.issued < self.job_timeout_s:
                continue
            del rnd.tasks[cid]
            live.busy.discard(cid)
            rnd.expired[cid] = task.counter
            live.totals.late_updates += 1
            if cid in self._clients:
                self._clients[cid].away = True
            log.warning("client %d has not sent the update of job %d within --job-timeout %g s: its slot is free "
                        "again", cid, task.counter, self.job_timeout_s)

    def _checkpoint(self) -> None:
        d = self.ledger.checkpoint_dict()
        with self._cv:
            for cid, info in self._clients.items():
                self.registry[cid] = {"num_examples": info.num_examples, "joins": info.joins}
        d["deploy"] = {"format": DEPLOY_FORMAT, "clients": dict(self.registry), "run_id": self.run_id}
        self.state_dir.save_checkpoint(d)

    # -- RPC handlers ----------------------------------------------------------------------------
    def authenticate(self, context, method: str) -> int:
        import grpc

        md = dict(context.invocation_metadata() or ())
        auth = md.get("authorization")
        token = auth[7:].strip() if isinstance(auth, str) and auth.startswith("Bearer ") else None
        cid = self.tokens.client_id(token)
        if cid is None:
            # never log the token's text
            log.warning("UNAUTHENTICATED %s from %s: %s token", method, context.peer(), "missing" if token is None else "unknown")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")
        return cid

    def _bound(self, cid: int) -> int:
        explicit = self.tokens.max_examples(cid)
        return explicit if explicit is not None else int(self.ledger.ctx.client_sizes[cid])

    def health(self):
        from . import fedweave_pb2 as pb2

        with self._cv:
            return pb2.HealthReply(status=self._phase, round=self.ledger.committed.round, rounds=self.cfg.schedule.rounds,
                                   clients_connected=len(self._online()), protocol=PROTOCOL)

    def join(self, cid: int, request, context):
        import grpc

        from . import fedweave_pb2 as pb2

        if request.protocol != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"client protocol {request.protocol!r}, server protocol {PROTOCOL!r}; update fedweave on one side")
        n = self.exp.data.num_clients
        if cid >= n:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"this token is bound to client {cid}, but the run has "
                                                               f"clients 0..{n - 1}")
        bound = self._bound(cid)
        if not 0 < request.num_examples <= bound:
            log.warning("client %d from %s claims %d examples; its bound is %d", cid, context.peer(),
                        request.num_examples, bound)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"client {cid} claims {request.num_examples} training examples; the bound registered for it "
                          f"is 1..{bound} (set max_examples in the token file for clients with their own data)")
        session = session_of(context)
        with self._cv:
            info = self._clients.get(cid)
            if info is None:
                self._clients[cid] = _Client(cid, request.num_examples, context.peer(), time.monotonic(), session=session)
            else:
                if info.session != session:  # a second process with this token: the newer session wins
                    log.warning("client %d: a new session from %s supersedes the %s session from %s", cid,
                                context.peer(), "live" if self._is_online(info) else "earlier", info.peer)
                info.joins += 1
                info.num_examples, info.peer, info.last_seen, info.away = request.num_examples, context.peer(), time.monotonic(), False
                info.session = session
            self._cv.notify_all()
        log.info("client %d joined from %s (%d examples)", cid, context.peer(), request.num_examples)
        data = self.exp.data
        return pb2.JoinReply(client_id=cid, config_yaml=client_config_yaml(self.cfg), num_clients=n, num_classes=data.num_classes,
                             input_shape=list(data.input_shape), run_id=self.run_id, frame_bytes=self.frame_bytes,
                             protocol=PROTOCOL)

    def _touch(self, cid: int) -> _Client | None:
        info = self._clients.get(cid)
        if info is not None:
            info.last_seen = time.monotonic()
            info.away = False
        return info

    def get_task(self, cid: int, request, context):
        import grpc

        from . import fedweave_pb2 as pb2

        wait = min(max(request.wait_ms, 0) / 1000.0, self.poll_s)
        end = time.monotonic() + wait
        task, status = None, "wait"
        session = session_of(context)
        with self._cv:
            info = self._clients.get(cid)
            if info is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "join first")
            self._check_session(info, session, context)
            self._touch(cid)
            if info.polling >= 2:  # one client holds at most two waiting calls (threads are shared)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent GetTask calls for this client")
            info.polling += 1
            self._cv.notify_all()
            try:
                while True:
                    if self._phase == "done":
                        status = "done"
                        self._told_done.add(cid)
                        self._cv.notify_all()
                        break
                    if self._phase == "stopping" or self._stop.is_set():
                        status = "shutdown"
                        break
                    if info.session != session:  # superseded while it waited
                        break
                    rnd = self._round
                    if rnd is not None and not rnd.closed and cid in rnd.tasks and cid not in rnd.received:
                        task, status = rnd.tasks[cid], "task"
                        break
                    if not context.is_active():  # the client hung up (or died) while waiting
                        info.away = True
                        break
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(min(left, 0.5))
            finally:
                info.polling -= 1
                if not info.away and info.session == session:
                    info.last_seen = time.monotonic()
            self._check_session(info, session, context)
        if task is None:
            frame = pb2.Frame(header=dump_header({"protocol": PROTOCOL, "kind": "control", "status": status, "data_bytes": 0}))
            self.wire.add(down=frame.ByteSize())
            yield frame
            return
        extra = {"status": "task", "round": task.round, "counter": task.counter, "client_id": cid, "lr": task.lr}
        sent = 0
        for header, data in task.encoded.frames(self.frame_bytes, extra):
            frame = pb2.Frame(header=header, data=data)
            sent += frame.ByteSize()
            yield frame
        self.wire.add(down=sent)

    def _check_session(self, info: _Client, session: str, context) -> None:
        """Abort a call of a session that a newer one superseded (under self._cv)."""
        import grpc

        if info.session != session:
            log.warning("client %d: refused a call of a superseded session from %s", info.client_id, context.peer())
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, superseded_message(info.client_id, info.peer))

    def receive_update(self, cid: int, frames, context):
        import grpc

        session = session_of(context)
        with self._cv:
            info = self._clients.get(cid)
            if info is not None:
                self._check_session(info, session, context)
        key = self.streams.open(cid, context)
        if key is None:
            log.warning("client %d (%s): refused an upload stream beyond its %d open ones", cid, context.peer(),
                        self.streams.per_client)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"client {cid} already has {self.streams.per_client} upload streams open")
        try:
            return self._receive_update(cid, self.streams.frames(key, frames), context, key)
        finally:
            self.streams.close(key)

    def _receive_update(self, cid: int, frames, context, key: int):
        import grpc

        from . import fedweave_pb2 as pb2

        a = Assembler(self.max_update_bytes)
        it = iter(frames)
        task: _Task | None = None
        rnd: _Round | None = None
        reason: str | None = None
        update: Update | None = None
        well_formed = False  # decoded and valid for its task; finiteness is the ledger's to judge too
        try:
            first = next(it, None)
            if first is None:
                raise WireError("empty upload (no frames)")
            a.feed(first.header, first.data, first.ByteSize())
            with self._cv:
                self._touch(cid)
                rnd = self._round
                reason = self._claim(cid, a.header, rnd)
                if reason is None:
                    rnd.received.add(cid)  # from here on, this is the client's one update of the round
                    task = rnd.tasks[cid]
            if task is not None:
                for f in it:
                    a.feed(f.header, f.data, f.ByteSize())
                header, data = a.done()
                update = decode_update(header, data, sent_params=task.broadcast.params)
                if self.payload_schema.update_class is not None:  # the method's own byte count
                    update = self.payload_schema.update_class(
                        **{f.name: getattr(update, f.name) for f in dataclasses.fields(update) if f.init})
                reason = self._validate(cid, update, task)
                well_formed = reason is None
                if well_formed and not update.is_finite():
                    reason = "the update holds non-finite values (NaN or infinity)"
        except WireError as exc:
            reason = f"malformed update: {exc}"
        except grpc.RpcError:  # the stream broke off: the client hung up, or it idled out
            reason = (f"the upload stream sent no frame for {self.streams.idle_s:g} s" if self.streams.idle_out(key)
                      else "the upload stream broke off")
        finally:
            self.wire.add(up=a.wire_bytes)
            if task is not None:
                with self._cv:
                    if rnd.closed or (rnd.keep and len(rnd.accepted) >= rnd.keep):
                        # the round is over or has its K updates: not counted in it (the ledger counts it late)
                        if reason is None and update is not None:
                            reason = f"late: round index {task.round} closed (deadline, enough updates or the run's end) before this update arrived"
                    else:
                        rnd.events.append((cid, update, well_formed))
                        if reason is None and update is not None:
                            rnd.accepted[cid] = update
                    rnd.finished.add(cid)
                    self._cv.notify_all()
        if reason is not None:
            if reason.startswith("late:"):  # an honest straggler: counted in late_updates, not as rejected
                log.info("late update from client %d: %s", cid, reason)
            else:
                self.wire.add(rejected=1)
                log.warning("rejected an update from client %d (%s): %s", cid, context.peer(), reason)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        return pb2.UpdateReply(accepted=True, detail="accepted", round=task.round)

    def _claim(self, cid: int, header: dict[str, Any], rnd: _Round | None) -> str | None:
        """Why this client may not send an update for the round its header claims, or None."""
        claimed = header.get("round")
        if header.get("client_id") != cid:
            return f"this token is bound to client {cid}; the update claims client {header.get('client_id')!r}"
        task = rnd.tasks.get(cid) if rnd is not None else None
        if task is None and rnd is not None and rnd.expired.get(cid) == header.get("counter"):
            return f"late: job {header.get('counter')} of client {cid} timed out (--job-timeout) before its upload began"
        if task is None or not _is_int(claimed) or claimed != task.round:
            open_ = task.round if task is not None and not rnd.closed else None
            return f"stale round: the update claims round index {claimed!r}; this client's open task is for {open_}"
        if cid in rnd.received:
            return f"duplicate: client {cid} already sent its update for round index {task.round}"
        if rnd.closed:
            return f"late: round index {task.round} closed (deadline, enough updates or the run's end) before this update arrived"
        if header.get("counter") != task.counter:
            return (f"the update claims job counter {header.get('counter')!r}; the task of round index {task.round} "
                    f"was job {task.counter}")
        return None

    def _validate(self, cid: int, u: Update, task: _Task) -> str | None:
        """Why an update does not fit its task (version, shapes, dtypes, example count, the
        method's payload schema), or None. Finiteness is checked after this: a non-finite update is rejected too, and
        the ledger counts it as one (a round of nothing else has diverged)."""
        p_shape, p_dtype, b_shape, b_dtype = self._expected
        if u.base_version != task.broadcast.version:
            return f"the update claims base version {u.base_version}; the task sent version {task.broadcast.version}"
        if self.payload_schema.replaces_model:
            if u.delta is not None:
                return "this method uploads its payload in place of the model: the update must carry no 'delta' or 'params'"
        elif u.delta is None:
            return "the update carries no model update ('delta' or 'params')"
        elif tuple(u.delta.shape) != p_shape or u.delta.dtype != p_dtype:
            return (f"the model update has shape {tuple(u.delta.shape)} and dtype {u.delta.dtype}; expected {p_shape} "
                    f"and {p_dtype}")
        if u.buffers is None:
            if b_shape != (0,):
                return f"the update lacks the model's buffers (expected shape {b_shape})"
        elif tuple(u.buffers.shape) != b_shape or u.buffers.dtype != b_dtype:
            return (f"the buffers have shape {tuple(u.buffers.shape)} and dtype {u.buffers.dtype}; expected {b_shape} "
                    f"and {b_dtype}")
        bound = self._bound(cid)
        if not 1 <= u.num_examples <= bound:
            return f"the update claims {u.num_examples} training examples; the bound registered for client {cid} is 1..{bound}"
        return self.payload_schema.check(u, self.payload_dims, task.broadcast)


def _ids(ids: list[int], show: int = 12) -> str:
    return ", ".join(map(str, ids[:show])) + (f" (+{len(ids) - show})" if len(ids) > show else "")


def _make_servicer_base():
    from . import fedweave_pb2_grpc as pb2_grpc

    return pb2_grpc.FederationServicer


class _Servicer(_make_servicer_base()):
    """gRPC glue: authenticate, then hand the call to the server."""

    def __init__(self, server: DeployServer):
        self.s = server

    def Health(self, request, context):
        return self.s.health()

    def Join(self, request, context):
        cid = self.s.authenticate(context, "Join")
        return self.s.join(cid, request, context)

    def GetTask(self, request, context):
        cid = self.s.authenticate(context, "GetTask")
        yield from self.s.get_task(cid, request, context)

    def SendUpdate(self, request_iterator, context):
        cid = self.s.authenticate(context, "SendUpdate")
        return self.s.receive_update(cid, request_iterator, context)


# -- the `fedweave serve` entry point ---------------------------------------------------------


def serve(
    config=None,
    *,
    address: str,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    tokens: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    state_dir: str | Path | None = None,
    resume: bool = False,
    min_clients: int | None = None,
    join_timeout_s: float | None = None,
    frame_bytes: int = DEFAULT_FRAME_BYTES,
    progress: Callable[[int, int, dict | None], None] | None = None,
    print_tokens: Callable[[str], None] = print,
    handle_signals: bool = True,
    quorum: int | None = None,
    stream_idle_s: float = DEFAULT_STREAM_IDLE_S,
    overwrite: bool = False,
    job_timeout_s: float | None = None,
):
    """Build the run (or reopen it with ``resume``), serve it until its rounds are done.

    A run directory that already holds a run is refused unless ``overwrite`` (then its run
    is deleted once the directory is locked), as for ``fedweave run``; an address another
    process listens on is refused before any directory or token exists."""
    from ..experiment import build_experiment, default_run_dir, open_for_resume, refuse_existing_run, take_run_dir

    check_serve_options(address=address, frame_bytes=frame_bytes, min_clients=min_clients,
                        join_timeout_s=join_timeout_s, tls_cert=tls_cert, tls_key=tls_key)
    check_port_free(address)
    for path, what in ((out, "The run directory (--out)"), (state_dir, "The state directory (--state-dir)")):
        if path is not None:
            check_output_path(path, what)
    given = TokenStore.load(tokens) if tokens is not None else None  # before any directory is made
    ckpt = None
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out DIR: the run directory of the server to continue.")
        if config is not None or overrides:
            raise ConfigError("--resume takes the config from the run directory; do not combine it with CONFIG or --set.")
        run_dir, cfg = open_for_resume(out)
        exp = build_experiment(cfg)
        sdir = RunDirectory(state_dir if state_dir is not None else run_dir.path)
        ckpt = sdir.load_checkpoint()
        if ckpt is None:
            run_dir.create(cfg.to_yaml())
        else:
            log.info("resuming after round %d from %s", int(ckpt["round"]), sdir.path)
        run_dir.clear_summary()
    else:
        cfg = load_config(config, overrides)
        if out is not None:
            cfg.output.dir = str(out)
        exp = build_experiment(cfg)
        run_dir = RunDirectory(check_output_path(cfg.output.dir or default_run_dir(cfg), "The run directory (--out)"))
        cfg.output.dir = str(run_dir.path)
        if not overwrite:
            refuse_existing_run(run_dir)
        take_run_dir(run_dir, overwrite)
        run_dir.create(cfg.to_yaml())
        sdir = RunDirectory(state_dir if state_dir is not None else run_dir.path)
        sdir.path.mkdir(parents=True, exist_ok=True)
        (sdir.path / "checkpoint.pt").unlink(missing_ok=True)  # never resume into another run's state
    store = given or _load_or_make_tokens(sdir.path, exp.data.num_clients, resume, print_tokens)
    server = DeployServer(exp, run_dir, store, address=address, state_dir=sdir.path, tls_cert=tls_cert, tls_key=tls_key,
                          min_clients=min_clients, frame_bytes=frame_bytes, checkpoint=ckpt, progress=progress,
                          join_timeout_s=join_timeout_s, quorum=quorum, stream_idle_s=stream_idle_s,
                          job_timeout_s=job_timeout_s)
    previous = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):
            log.warning("%s: shutting down after checkpointing the last completed round", signal.Signals(signum).name)
            server.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        server.start()
        return server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        run_dir.unlock()


def _load_or_make_tokens(state_dir: Path, num_clients: int, resume: bool, print_tokens) -> TokenStore:
    own = state_dir / TOKENS_FILE
    if resume and own.is_file():
        return TokenStore.load(own)
    store, plain = TokenStore.generate(num_clients)
    store.save(own, overwrite=True)
    log.warning("no --tokens file: made one token per client (hashes in %s); the tokens are printed once:", own)
    for cid, token in plain.items():
        print_tokens(f"{cid} {token}")
    return store
