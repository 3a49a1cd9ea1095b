"""The discrete-event simulator: synchronous rounds, asynchronous and buffered modes.

Time is virtual and separate from compute. When a client is dispatched, the engine
decides its job's segment durations from its device profile (download, compute, and
an optional intermediate fetch point) and puts events on a queue ordered by
``(virtual time, sequence number)``; the executor runs the job's training whenever it
likes between submission and the ``compute_done`` event. The upload of the actual
message then takes what the fleet says (``fleet.upload_s(client, start, bytes, job)``:
``bytes / uplink``, or retried attempts over a wireless channel for ``uam_wireless``),
and the ``arrival`` event hands the update to
the strategy. Results depend only on the config and seed, never on the executor.

Modes (``schedule.mode``):

``sync``
    select K clients among those online (over-selecting ⌈(1+x)K⌉ if asked), dispatch
    all at the round's start; the round ends when all of them have arrived, or when the
    first K have (over-selection), with arrivals later than ``deadline_s`` dropped as
    late. The round's virtual time ends at its last accepted arrival. Accepted updates
    are aggregated in client-id order, never arrival order.
``async``
    ``concurrency`` clients busy at all times; every arrival is merged at once
    (``strategy.on_update``) and the freed slot is given to an idle, online client
    (uniformly at random). Staleness = versions elapsed since the client's base version;
    arrivals staler than ``max_staleness`` are dropped.
``buffered``
    as async, but arrivals are buffered and merged every ``buffer_size`` arrivals
    (``strategy.aggregate``, in client-id order) — FedBuff.

Failures: a job fails with probability ``system.dropout`` (decided at dispatch) and is
noticed when its compute would have ended; a device that goes offline before its upload
completes drops the job. Both are counted.

Bookkeeping is *committed* at consistent points (end of every sync round; in async
modes at every evaluation and checkpoint), so an interruption at any moment leaves a
resumable state, and a resumed run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DivergedError
from ..messages import Broadcast, tensor_is_finite
from ..methods.base import ClientJob, ServerContext, ServerState
from ..metrics import fairness
from ..params import FlatModel
from ..rundir import RunDirectory
from .events import EventQueue, VirtualClock
from .sampling import pick_idle, select_clients
from .state_store import ClientStateStore

CHECKPOINT_FORMAT = 2


class Observer:
    """Sees what happens in a run without changing it (an eavesdropper, a logger).

    Every method is optional to override; observer state goes into checkpoints.
    """

    def on_upload(self, update, round_: int) -> None:
        """An uplink message arrived (in arrival order), accepted or not."""

    def on_round_end(self, state: ServerState, round_: int) -> None:
        """An aggregation is done (a sync round, an async merge, a buffer flush)."""

    def evaluate(self, module: torch.nn.Module, state: ServerState) -> dict:
        """Extra figures for the evaluation record (the global model is loaded in ``module``)."""
        return {}

    def summary(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def round_lr(client_cfg, round_: int, total_rounds: int) -> float:
    """The client learning rate of ``round_`` under ``client.lr_schedule``."""
    lr, kind = client_cfg.lr, client_cfg.lr_schedule
    if kind == "step":
        return lr * client_cfg.lr_decay ** (round_ // client_cfg.lr_step_rounds)
    if kind == "exponential":
        return lr * client_cfg.lr_decay**round_
    if kind == "cosine":
        lo = client_cfg.lr_min
        return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * round_ / max(total_rounds, 1)))
    return lr


@dataclass
class Totals:
    bytes_up: int = 0
    bytes_down: int = 0
    client_updates: int = 0
    dropped_updates: int = 0  # non-finite, failed, offline or too stale
    late_updates: int = 0  # past the deadline or beyond the over-selected K
    arrivals: int = 0
    staleness_sum: float = 0.0
    staleness_max: int = 0
    staleness_count: int = 0


@dataclass
class Committed:
    """Everything that defines the run at a consistent point (what a checkpoint holds)."""

    round: int  # sync: completed rounds; async/buffered: aggregations (versions)
    state: ServerState
    client_states: dict
    counters: np.ndarray
    clock: float
    totals: Totals
    history: list = field(default_factory=list)
    wall_time_s: float = 0.0
    observers: list = field(default_factory=list)
    participation: np.ndarray | None = None
    # async / buffered only
    queue: list = field(default_factory=list)
    queue_seq: int = 0
    busy: list = field(default_factory=list)
    buffer: list = field(default_factory=list)
    dispatches: int = 0
    next_eval_s: float | None = None
    done: bool = False
    pending_losses: list = field(default_factory=list)
    server_client_states: dict = field(default_factory=dict)  # the strategy's per-client store


class _Stop(Exception):
    """The budget is spent."""


class Simulator:
    def __init__(self, exp, run_dir: RunDirectory, progress: Callable[[int, int, dict | None], None] | None = None):
        self.exp = exp
        self.cfg = exp.config
        self.run_dir = run_dir
        self.progress = progress
        self.clock = VirtualClock()
        budget = self.cfg.executor.state_memory_mb
        limit = None if budget is None else int(budget * 2**20)
        self.store = ClientStateStore(limit, run_dir.path / "client_state" if limit is not None else None)
        # what strategies keep per client on the server, under the same budget
        self.server_store = ClientStateStore(limit, run_dir.path / "server_state" if limit is not None else None)
        self.ctx = ServerContext(
            spec=exp.spec, num_clients=exp.data.num_clients, client_sizes=exp.data.client_sizes(),
            clock=self.clock, seed=self.cfg.seed, server_data=exp.data.server_data(),
            model_factory=exp.model_factory, client_store=self.server_store,
        )
        self.eval_model = FlatModel(exp.model_factory(), exp.roles)
        self._initial_personal = {"personal": self.eval_model.personal.clone(),
                                  "personal_buffers": self.eval_model.personal_buffers.clone()}
        state = exp.strategy.init(exp.initial_params, exp.initial_buffers, self.ctx)
        n = exp.data.num_clients
        every_s = self.cfg.eval.every_s
        self.committed = Committed(0, state, {}, np.zeros(n, dtype=np.int64), 0.0, Totals(),
                                   participation=np.zeros(n, dtype=np.int64), next_eval_s=every_s)
        self._wall_offset = 0.0
        self._checkpointed: dict = {}
        self._checkpointed_server: dict = {}
        # one concatenated validation set, so per-client figures cost one forward pass
        val = exp.data.client_val
        self._val_idx = torch.cat(val) if val and sum(len(v) for v in val) else torch.zeros(0, dtype=torch.long)
        self._val_owner = (
            torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(val)]) if len(self._val_idx) else None
        )

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        c = self.committed
        self._checkpointed = c.client_states
        self._checkpointed_server = c.server_client_states
        d = {k: getattr(c, k) for k in c.__dataclass_fields__}
        d["state"] = c.state.to_dict()
        d["totals"] = vars(c.totals).copy()
        d["format"] = CHECKPOINT_FORMAT
        d["torch_rng"] = torch.get_rng_state()
        return d

    def restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            from ..errors import ConfigError

            raise ConfigError(f"This checkpoint has format {ckpt.get('format')}; this fedweave reads format {CHECKPOINT_FORMAT}.")
        fields = {k: ckpt[k] for k in Committed.__dataclass_fields__ if k in ckpt}
        fields["state"] = ServerState.from_dict(ckpt["state"])
        fields["totals"] = Totals(**ckpt["totals"])
        self.committed = Committed(**fields)
        self._wall_offset = self.committed.wall_time_s
        self._checkpointed = self.committed.client_states  # its spill files must survive
        self._checkpointed_server = self.committed.server_client_states
        for obs, st in zip(self.exp.observers, self.committed.observers):
            obs.load_state_dict(st)
        torch.set_rng_state(ckpt["torch_rng"])

    def _snapshot(self, **live) -> None:
        """Commit the live bookkeeping (copies where the live objects keep changing)."""
        c = self.committed
        previous, previous_server = c.client_states, c.server_client_states
        self.committed = Committed(
            round=live["round"], state=_copy_state(live["state"]), client_states=self.store.state_dict(),
            counters=live["counters"].copy(), clock=self.clock.now(), totals=copy.copy(live["totals"]),
            history=list(live["history"]), wall_time_s=self._wall(),
            observers=[obs.state_dict() for obs in self.exp.observers],
            participation=live["participation"].copy(),
            queue=[copy.copy(e) for e in live.get("queue", [])], queue_seq=live.get("queue_seq", 0),
            busy=list(live.get("busy", [])), buffer=list(live.get("buffer", [])),
            dispatches=live.get("dispatches", 0), next_eval_s=live.get("next_eval_s", c.next_eval_s),
            done=live.get("done", False), pending_losses=list(live.get("pending_losses", [])),
            server_client_states=self.server_store.state_dict(),
        )
        if self.store.spill_dir is not None:
            # files that only the previous snapshot used may still be in the last checkpoint
            self.store.collect_garbage(self.committed.client_states, previous, self._checkpointed)
            self.server_store.collect_garbage(self.committed.server_client_states, previous_server,
                                              self._checkpointed_server)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Committed:
        self._t_start = time.perf_counter()
        self.store.load_state_dict(self.committed.client_states)
        self.server_store.load_state_dict(self.committed.server_client_states)
        self.clock.t = self.committed.clock
        if self.cfg.schedule.mode == "sync":
            self._run_sync()
        else:
            self._run_async()
        return self.committed

    def _wall(self) -> float:
        return self._wall_offset + time.perf_counter() - getattr(self, "_t_start", time.perf_counter())

    def _settings(self, round_: int):
        self.ctx.round_lr = round_lr(self.cfg.client, round_, self.cfg.schedule.rounds)
        return self.exp.train_settings(self.ctx.round_lr)

    def _make_job(self, cid: int, counters: np.ndarray, round_: int, broadcast: Broadcast, settings) -> ClientJob:
        job = ClientJob(cid, int(counters[cid]), round_, broadcast, self.store.get(cid), settings)
        job.fetch_fraction = self.exp.algorithm.fetch_fraction(job)
        return job

    def _schedule_job(self, queue: EventQueue, job: ClientJob, t0: float) -> None:
        """Decide the job's segments on the virtual clock and queue its events."""
        exp, cid = self.exp, job.client_id
        n = len(exp.data.client_train[cid])
        down = job.broadcast.num_bytes()
        profile = exp.fleet[cid]
        t_down = t0 + profile.download_s(down)
        compute = exp.fleet.compute_s(cid, job.settings.examples_processed(n))
        info = {"job": job, "t0": t0, "down": down}
        if exp.fleet.drops(cid, job.counter):
            queue.push(t_down + compute, "failed", info)
            return
        if job.fetch_fraction is not None:
            # the fresh model is requested part-way and downloaded while the device waits
            queue.push(t_down + job.fetch_fraction * compute, "fetch", info)
            compute += profile.download_s(down)
        else:
            info["handle"] = exp.executor.submit(job)
        queue.push(t_down + compute, "compute_done", info)

    def _finish_compute(self, queue: EventQueue, info: dict, t: float) -> None:
        """Collect the job's result and queue its arrival after the upload."""
        job = info["job"]
        handle = info.pop("handle", None)
        if handle is None:  # after a resume, or a job with a fetch: submit now
            handle = self.exp.executor.submit(job)
        res = self.exp.executor.collect(handle)
        info["result"] = res
        info["up"] = res.update.num_bytes()
        queue.push(t + self.exp.fleet.upload_s(job.client_id, t, info["up"], job.counter), "arrival", info)

    def _online_at_arrival(self, info: dict, t: float) -> bool:
        until = self.exp.fleet[info["job"].client_id].online_until(info["t0"])
        return until is None or t <= until

    # -- synchronous rounds -------------------------------------------------------------------
    def _run_sync(self) -> None:
        cfg = self.cfg
        for r in range(self.committed.round, cfg.schedule.rounds):
            if cfg.schedule.max_time_s is not None and self.clock.now() >= cfg.schedule.max_time_s:
                break
            record = self._sync_round(r)
            if self.progress:
                self.progress(r + 1, cfg.schedule.rounds, record)
            every = cfg.output.checkpoint_every
            if every and (r + 1) % every == 0 and r + 1 < cfg.schedule.rounds:
                self.run_dir.save_checkpoint(self.checkpoint_dict())

    def _sync_round(self, r: int) -> dict | None:
        exp, cfg, c = self.exp, self.cfg, self.committed
        sched, fleet = cfg.schedule, exp.fleet
        state = c.state
        settings = self._settings(r)
        t0 = self._wait_until_online(self.clock.now())
        self.clock.advance_to(t0)
        online = None if fleet.always_online else np.flatnonzero(fleet.available_mask(t0))
        k = sched.clients_per_round
        dispatch_k = math.ceil((1 + sched.over_select) * k) if sched.over_select else k
        selected = select_clients(sched.sampling, r, self.ctx.num_clients, dispatch_k, cfg.seed,
                                  self.ctx.client_sizes, sched.sampling_rate, online)
        keep = k if sched.over_select else len(selected)
        broadcasts = exp.strategy.configure(selected, state, self.ctx)
        counters = c.counters.copy()
        queue = EventQueue()
        for cid in selected:
            self._schedule_job(queue, self._make_job(cid, counters, r, broadcasts[cid], settings), t0)
            counters[cid] += 1
        deadline = t0 + sched.deadline_s if sched.deadline_s is not None else math.inf
        totals = copy.copy(c.totals)
        participation = c.participation.copy()
        accepted, new_states, losses = [], {}, []
        nonfinite = 0
        end = t0
        for cid in selected:
            totals.bytes_down += broadcasts[cid].num_bytes()
        while queue and len(accepted) < keep:
            ev = queue.pop()
            info = ev.data
            if ev.time > deadline:
                # everything still in flight is late; nothing more is accepted
                rest = [ev] + _drain(queue)
                totals.dropped_updates += sum(1 for e in rest if e.kind == "failed")
                totals.late_updates += len({id(e.data) for e in rest if e.kind != "failed"})
                break
            if ev.kind == "failed":
                totals.dropped_updates += 1
            elif ev.kind == "fetch":
                info["job"].fetched = Broadcast(state.version, state.params, state.buffers)
                totals.bytes_down += info["job"].fetched.num_bytes()
                info["handle"] = exp.executor.submit(info["job"])
            elif ev.kind == "compute_done":
                self._finish_compute(queue, info, ev.time)
            elif ev.kind == "arrival":
                res = info["result"]
                totals.bytes_up += info["up"]
                totals.arrivals += 1
                for obs in exp.observers:
                    obs.on_upload(res.update, r)
                if not self._online_at_arrival(info, ev.time):
                    totals.dropped_updates += 1
                    continue
                if not res.update.is_finite():
                    totals.dropped_updates += 1
                    nonfinite += 1
                    continue
                end = ev.time
                totals.client_updates += 1
                participation[info["job"].client_id] += 1
                accepted.append(res.update)
                new_states[info["job"].client_id] = res.state
                losses.append(res.update.metrics.get("loss", float("nan")))
        if queue:  # over-selected stragglers beyond the first K
            stragglers = [e for e in _drain(queue) if e.kind != "failed"]
            totals.late_updates += len({id(e.data) for e in stragglers})
            for e in stragglers:
                if "handle" in e.data:
                    exp.executor.cancel(e.data["handle"])
        accepted.sort(key=lambda u: u.client_id)
        for hook in exp.cohort_hooks:
            accepted = hook(accepted, state, r, self.ctx)
        if not accepted and nonfinite and nonfinite == totals.arrivals - c.totals.arrivals:
            raise DivergedError(f"Every update of round {r + 1} was non-finite; lower client.lr or check the method's settings.")
        # strategies may update the state in place: aggregate a copy, so the committed
        # state stays that of the last completed round until this one is committed
        new_state = exp.strategy.aggregate(accepted, _copy_state(state), self.ctx)
        self._check_finite(new_state, f"round {r + 1}")
        new_state.round = r + 1
        for obs in exp.observers:
            obs.on_round_end(new_state, r)
        for cid, st in new_states.items():
            self.store.put(cid, st)
        if not accepted and sched.deadline_s is not None:
            end = deadline
        self.clock.advance_to(max(end, t0))
        records = []
        next_eval_s = c.next_eval_s
        if cfg.eval.every_s is not None:
            # grid points passed during this round see the model as it was before it
            # (with the figures of the last completed round)
            while next_eval_s <= self.clock.now():
                records.append(self._evaluate(state, r, c.totals, [], at_time=next_eval_s))
                next_eval_s += cfg.eval.every_s
            due = r + 1 == sched.rounds or self._budget_spent()
        else:
            due = (r + 1) % cfg.eval.every == 0 or r + 1 == sched.rounds or self._budget_spent()
        if due:
            records.append(self._evaluate(new_state, r + 1, totals, losses))
        self._snapshot(round=r + 1, state=new_state, counters=counters, totals=totals,
                       history=c.history + records, participation=participation, next_eval_s=next_eval_s)
        for record in records:
            self.run_dir.append_metrics(record)
        return records[-1] if records else None

    def _budget_spent(self) -> bool:
        limit = self.cfg.schedule.max_time_s
        return limit is not None and self.clock.now() >= limit

    def _wait_until_online(self, t: float) -> float:
        fleet = self.exp.fleet
        if fleet.always_online or fleet.available_mask(t).any():
            return t
        nxt = min(fleet[i].next_online(t) for i in range(len(fleet)))
        if not math.isfinite(nxt):
            raise DivergedError(f"No device is ever online again after virtual time {t:.1f} s (check the availability trace).")
        return nxt

    # -- asynchronous and buffered modes --------------------------------------------------
    def _run_async(self) -> None:
        exp, cfg, c = self.exp, self.cfg, self.committed
        sched = cfg.schedule
        buffered = sched.mode == "buffered"
        concurrency = min(sched.concurrency or sched.clients_per_round, self.ctx.num_clients)
        buffer_size = sched.buffer_size or sched.clients_per_round
        max_arrivals = sched.max_arrivals or (None if sched.max_time_s else sched.rounds * sched.clients_per_round)
        total = max_arrivals or 0
        every_s = cfg.eval.every_s
        live = dict(round=c.round, state=c.state, counters=c.counters.copy(), totals=copy.copy(c.totals),
                    history=list(c.history), participation=c.participation.copy(), busy=list(c.busy),
                    buffer=list(c.buffer), dispatches=c.dispatches, next_eval_s=c.next_eval_s, done=c.done,
                    pending_losses=list(c.pending_losses))
        if live["done"]:
            return
        self._settings(live["round"])  # ctx.round_lr is right from the first event, also after a resume
        queue = EventQueue()
        queue._heap = [copy.copy(e) for e in c.queue]
        queue._seq = c.queue_seq
        busy: set[int] = set(live["busy"])
        pending_losses: list[float] = live["pending_losses"]  # train losses since the last evaluation

        def commit():
            live["busy"] = sorted(busy)
            self._snapshot(queue=queue._heap, queue_seq=queue._seq, **live)

        def dispatch(t: float) -> None:
            """Fill free slots with idle, online clients (uniformly at random)."""
            while len(busy) < concurrency:
                free = np.ones(self.ctx.num_clients, dtype=bool)
                free[list(busy)] = False
                if not exp.fleet.always_online:
                    free &= exp.fleet.available_mask(t)
                idle = np.flatnonzero(free)
                if not len(idle):
                    offline = [i for i in range(self.ctx.num_clients) if i not in busy]
                    nxt = min((exp.fleet[i].next_online(t) for i in offline), default=math.inf)
                    if math.isfinite(nxt) and not any(e.kind == "wake" for e in queue._heap):
                        queue.push(nxt, "wake")
                    return
                cid = pick_idle(cfg.seed, live["dispatches"], idle)
                live["dispatches"] += 1
                state = live["state"]
                broadcast = exp.strategy.configure([cid], state, self.ctx)[cid]
                job = self._make_job(cid, live["counters"], live["round"], broadcast, self._settings(live["round"]))
                live["counters"][cid] += 1
                live["totals"].bytes_down += broadcast.num_bytes()
                busy.add(cid)
                self._schedule_job(queue, job, t)

        def evaluate(at: float) -> None:
            record = self._evaluate(live["state"], live["round"], live["totals"], pending_losses, at_time=at)
            pending_losses.clear()
            live["history"].append(record)
            commit()
            self.run_dir.append_metrics(record)
            if self.progress:
                self.progress(live["totals"].arrivals, total, record)

        def merged(new_state: ServerState) -> None:
            if self._advance_version(live, new_state):
                evaluate(self.clock.now())
            every = cfg.output.checkpoint_every
            if every and live["round"] % every == 0:
                commit()
                self.run_dir.save_checkpoint(self.checkpoint_dict())

        # fill free slots: at the start, and after a resume from a commit made while an
        # arrival was being processed (before its slot was refilled) — the same dispatch
        # the uninterrupted run makes right after that arrival
        spent = max_arrivals is not None and live["totals"].arrivals >= max_arrivals
        if not spent:
            dispatch(self.clock.now())
        try:
            while queue and not spent:
                ev = queue.peek()
                if every_s is not None and ev.time >= live["next_eval_s"]:
                    # evaluate the model as it is at the grid point, before later events
                    at = live["next_eval_s"]
                    self.clock.advance_to(at)
                    live["next_eval_s"] = at + every_s  # committed by evaluate()
                    evaluate(at)
                    continue
                if sched.max_time_s is not None and ev.time > sched.max_time_s:
                    self.clock.advance_to(sched.max_time_s)
                    raise _Stop
                ev = queue.pop()
                self.clock.advance_to(ev.time)
                info = ev.data
                if ev.kind == "wake":
                    dispatch(ev.time)
                elif ev.kind == "failed":
                    live["totals"].dropped_updates += 1
                    busy.discard(info["job"].client_id)
                    dispatch(ev.time)
                elif ev.kind == "fetch":
                    st = live["state"]
                    info["job"].fetched = Broadcast(st.version, st.params, st.buffers)
                    live["totals"].bytes_down += info["job"].fetched.num_bytes()
                    info["handle"] = exp.executor.submit(info["job"])
                elif ev.kind == "compute_done":
                    self._finish_compute(queue, info, ev.time)
                elif ev.kind == "arrival":
                    self._async_arrival(info, ev.time, live, busy, buffered, buffer_size, merged)
                    if max_arrivals is not None and live["totals"].arrivals >= max_arrivals:
                        raise _Stop
                    dispatch(ev.time)
        except _Stop:
            pass
        if buffered and live["buffer"]:
            pass  # a partial buffer at the end is not merged (FedBuff merges full buffers only)
        live["done"] = True
        last = live["history"][-1] if live["history"] else None
        if last is None or last["virtual_time_s"] < self.clock.now() or last.get("version") != live["state"].version:
            evaluate(self.clock.now())
        else:
            commit()

    def _advance_version(self, live: dict, new_state: ServerState) -> bool:
        """Install a merged state as the next version (async/buffered); returns whether
        that version is due an evaluation under ``eval.every``."""
        self._check_finite(new_state, f"version {new_state.version}")
        live["round"] += 1
        new_state.round = live["round"]
        live["state"] = new_state
        for obs in self.exp.observers:
            obs.on_round_end(new_state, live["round"])
        return self.cfg.eval.every_s is None and live["round"] % self.cfg.eval.every == 0

    def _async_arrival(self, info, t, live, busy, buffered, buffer_size, merged) -> None:
        exp = self.exp
        job, res = info["job"], info["result"]
        totals = live["totals"]
        busy.discard(job.client_id)
        totals.bytes_up += info["up"]
        totals.arrivals += 1
        for obs in exp.observers:
            obs.on_upload(res.update, live["round"])
        self._admit_arrival(res.update, self._online_at_arrival(info, t) and res.update.is_finite(), live,
                            buffered, buffer_size, merged, res.state)

    def _admit_arrival(self, update, valid: bool, live: dict, buffered: bool, buffer_size: int, merged,
                       client_state: dict | None = None) -> bool:
        """Async/buffered: count an arrival, drop it if invalid or too stale, else merge it
        (or buffer it until ``buffer_size``). Shared by the simulator and the gRPC server."""
        exp, sched, totals = self.exp, self.cfg.schedule, live["totals"]
        if not valid:
            totals.dropped_updates += 1
            return False
        state = live["state"]
        staleness = state.version - update.base_version
        if sched.max_staleness is not None and staleness > sched.max_staleness:
            totals.dropped_updates += 1
            return False
        totals.client_updates += 1
        totals.staleness_sum += staleness
        totals.staleness_count += 1
        totals.staleness_max = max(totals.staleness_max, staleness)
        live["participation"][update.client_id] += 1
        self.store.put(update.client_id, client_state)  # before the merge, which may commit
        live["pending_losses"].append(update.metrics.get("loss", float("nan")))
        if buffered:
            live["buffer"].append(update)
            if len(live["buffer"]) >= buffer_size:
                batch = sorted(live["buffer"], key=lambda u: u.client_id)
                live["buffer"] = []
                for hook in exp.cohort_hooks:
                    batch = hook(batch, state, live["round"], self.ctx)
                merged(exp.strategy.aggregate(batch, _copy_state(state), self.ctx))
        else:
            merged(exp.strategy.on_update(update, _copy_state(state), self.ctx))
        return True

    def _check_finite(self, state: ServerState, where: str) -> None:
        if not tensor_is_finite(state.params) or not tensor_is_finite(state.buffers):
            raise DivergedError(f"The global model became non-finite at {where}; lower client.lr or check the method's settings.")

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def _load_eval_model(self, state: ServerState) -> torch.nn.Module:
        m = self.eval_model
        m.params.copy_(state.params)
        if m.buffers.numel():
            m.buffers.copy_(state.buffers)
        if m.personal.numel() or m.personal_buffers.numel():
            # the global model has no personal parts: the initial ones, not those of the
            # client that personalized evaluation loaded last
            m.personal.copy_(self._initial_personal["personal"])
            m.personal_buffers.copy_(self._initial_personal["personal_buffers"])
        return m.module

    @torch.no_grad()
    def _evaluate(self, state: ServerState, round_: int, totals: Totals, train_losses: list[float],
                  at_time: float | None = None) -> dict:
        exp, cfg = self.exp, self.cfg
        module = self._load_eval_model(state)
        task = exp.task
        scores = task.evaluate(module, exp.data.x_test, exp.data.y_test, cfg.eval.batch_size)
        if not all(math.isfinite(v) for v in scores.values()):
            raise DivergedError(f"The global model's test loss became non-finite after round {round_}; lower client.lr.")
        finite_losses = [v for v in train_losses if not math.isnan(v)]
        record: dict[str, Any] = {
            "round": round_,
            "version": state.version,
            "virtual_time_s": self.clock.now() if at_time is None else at_time,
            "wall_time_s": self._wall(),
            task.metric_name: scores[task.metric_name],
            "loss": scores["loss"],
            "train_loss": float(np.mean(finite_losses)) if finite_losses else None,
            "bytes_up": totals.bytes_up,
            "bytes_down": totals.bytes_down,
            "client_updates": totals.client_updates,
            "dropped_updates": totals.dropped_updates,
            "late_updates": totals.late_updates,
        }
        if self.cfg.schedule.mode != "sync":
            record["arrivals"] = totals.arrivals
            record["staleness_mean"] = totals.staleness_sum / totals.staleness_count if totals.staleness_count else 0.0
            record["staleness_max"] = totals.staleness_max
        for k, v in scores.items():
            record.setdefault(k, v)
        if cfg.eval.per_client and self._val_owner is not None:
            client_scores = self._per_client_scores(module)
            record.update(fairness(client_scores, exp.task.higher_is_better), client_scores=[float(v) for v in client_scores])
        if cfg.eval.personalized:
            record.update(self._personalized_scores(state))
            self._load_eval_model(state)  # observers below see the global model
        record.update(exp.strategy.metrics(state))
        for obs in exp.observers:
            record.update(obs.evaluate(module, state))
        return record

    @torch.no_grad()
    def _personalized_scores(self, state: ServerState) -> dict[str, float]:
        """Each client's own model (the method's personalization) on its held-out split."""
        data, task, exp = self.exp.data, self.exp.task, self.exp
        broadcast = Broadcast(state.version, state.params, state.buffers)
        module = self.eval_model.module
        module.eval()
        scores = []
        for cid, val in enumerate(data.client_val):
            if len(val) == 0:
                continue
            exp.algorithm.personalize(self.eval_model, broadcast, self.store.get(cid), self._initial_personal)
            scores.append(task.client_score(task.per_example_score(module(data.x[val]), data.y[val])))
        module.train()
        figures = fairness(np.array(scores), task.higher_is_better)
        return {k.replace("client_acc", "personalized_acc"): v for k, v in figures.items() if k.startswith("client_acc")}

    def _per_client_scores(self, module: torch.nn.Module) -> np.ndarray:
        data, task = self.exp.data, self.exp.task
        was_training = module.training
        module.eval()
        parts = []
        bs = self.cfg.eval.batch_size
        for start in range(0, len(self._val_idx), bs):
            idx = self._val_idx[start : start + bs]
            parts.append(task.per_example_score(module(data.x[idx]), data.y[idx]))
        module.train(was_training)
        per_example = torch.cat(parts)
        # the validation set is concatenated client by client: split it back
        counts = [c for c in torch.bincount(self._val_owner).tolist() if c > 0]
        return np.array([task.client_score(chunk) for chunk in torch.split(per_example, counts)])


def _drain(queue: EventQueue) -> list:
    out = []
    while queue:
        out.append(queue.pop())
    return out


def _copy_state(state: ServerState) -> ServerState:
    """A snapshot that later (non-in-place) strategy updates cannot change."""
    return ServerState(state.params, state.buffers, state.version, state.round, dict(state.extra))
