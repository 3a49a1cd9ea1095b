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

The engine keeps the event queue and its dispatch; the bookkeeping — admission,
aggregation, divergence, evaluation, commits — is the :class:`~fedweave.sim.ledger.RoundLedger`'s,
shared with the deployment server. Bookkeeping is *committed* at consistent points (end
of every sync round; in async modes at every evaluation and checkpoint), so an
interruption at any moment leaves a resumable state, and a resumed run ends with the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np

from ..core.client import ClientJob
from ..core.errors import DivergedError
from ..core.messages import Broadcast
from ..core.observer import Observer  # noqa: F401  (also importable from here, as before)
from ..rundir import RunDirectory
from .events import EventQueue, VirtualClock
from .ledger import CHECKPOINT_FORMAT, MERGED, Committed, RoundLedger, Totals, round_lr  # noqa: F401 (re-exported)


class _Stop(Exception):
    """The budget is spent."""


class Simulator:
    """The virtual-clock driver of a run: decides when every job segment happens and
    hands arrivals to its :class:`~fedweave.sim.ledger.RoundLedger` (``self.ledger``),
    which keeps the run's bookkeeping."""

    def __init__(self, exp, run_dir: RunDirectory, progress: Callable[[int, int, dict | None], None] | None = None):
        self.exp = exp
        self.cfg = exp.config
        self.run_dir = run_dir
        self.progress = progress
        self.clock = VirtualClock()
        self.ledger = RoundLedger(exp, run_dir, self.clock)

    # the ledger's parts that callers read
    @property
    def committed(self) -> Committed:
        return self.ledger.committed

    @property
    def store(self):
        return self.ledger.store

    @property
    def server_store(self):
        return self.ledger.server_store

    @property
    def ctx(self):
        return self.ledger.ctx

    @property
    def eval_model(self):
        return self.ledger.eval_model

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        return self.ledger.checkpoint_dict()

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.ledger.restore(ckpt)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Committed:
        self.ledger.start()
        self.clock.t = self.committed.clock
        if self.cfg.schedule.mode == "sync":
            self._run_sync()
        else:
            self._run_async()
        return self.committed

    def _make_job(self, cid: int, counter: int, round_: int, broadcast: Broadcast, settings) -> ClientJob:
        job = ClientJob(cid, counter, round_, broadcast, self.store.get(cid), settings)
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
            if self.ledger.budget_spent():
                break
            record = self._sync_round(r)
            if self.progress:
                self.progress(r + 1, cfg.schedule.rounds, record)
            every = cfg.output.checkpoint_every
            if every and (r + 1) % every == 0 and r + 1 < cfg.schedule.rounds:
                self.run_dir.save_checkpoint(self.checkpoint_dict())

    def _sync_round(self, r: int) -> dict | None:
        exp, cfg, ledger = self.exp, self.cfg, self.ledger
        sched, fleet = cfg.schedule, exp.fleet
        state = self.committed.state
        t0 = self._wait_until_online(self.clock.now())
        self.clock.advance_to(t0)
        online = None if fleet.always_online else np.flatnonzero(fleet.available_mask(t0))
        rnd = ledger.open_round(r, online)
        queue = EventQueue()
        for cid in rnd.selected:
            job = self._make_job(cid, rnd.job_counters[cid], r, rnd.broadcasts[cid], rnd.settings)
            self._schedule_job(queue, job, t0)
        deadline = t0 + sched.deadline_s if sched.deadline_s is not None else math.inf
        end = t0
        while queue and len(rnd.accepted) < rnd.keep:
            ev = queue.pop()
            info = ev.data
            if ev.time > deadline:
                # everything still in flight is late; nothing more is accepted
                rest = [ev] + _drain(queue)
                ledger.job_failed(rnd, sum(1 for e in rest if e.kind == "failed"))
                ledger.late(rnd, len({id(e.data) for e in rest if e.kind != "failed"}))
                break
            if ev.kind == "failed":
                ledger.job_failed(rnd)
            elif ev.kind == "fetch":
                info["job"].fetched = Broadcast(state.version, state.params, state.buffers)
                ledger.fetched(rnd, info["job"].fetched)
                info["handle"] = exp.executor.submit(info["job"])
            elif ev.kind == "compute_done":
                self._finish_compute(queue, info, ev.time)
            elif ev.kind == "arrival":
                res = info["result"]
                ledger.arrive(rnd, res.update, info["up"])
                if ledger.admit(rnd, res.update, self._online_at_arrival(info, ev.time), res.state):
                    end = ev.time
        if queue:  # over-selected stragglers beyond the first K
            stragglers = [e for e in _drain(queue) if e.kind != "failed"]
            ledger.late(rnd, len({id(e.data) for e in stragglers}))
            for e in stragglers:
                if "handle" in e.data:
                    exp.executor.cancel(e.data["handle"])
        new_state = ledger.aggregate_round(rnd)
        if not rnd.aggregated and sched.deadline_s is not None:
            end = deadline
        self.clock.advance_to(max(end, t0))
        return ledger.commit_round(rnd, new_state)

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
        exp, cfg, ledger = self.exp, self.cfg, self.ledger
        c = self.committed
        sched = cfg.schedule
        concurrency = min(sched.concurrency or sched.clients_per_round, self.ctx.num_clients)
        max_arrivals = sched.max_arrivals or (None if sched.max_time_s else sched.rounds * sched.clients_per_round)
        total = max_arrivals or 0
        queue = EventQueue()
        live = ledger.begin_async(lambda: {"queue": queue._heap, "queue_seq": queue._seq})
        if live.done:
            return
        ledger.settings(live.round)  # ctx.round_lr is right from the first event, also after a resume
        queue._heap = [copy.copy(e) for e in c.queue]
        queue._seq = c.queue_seq
        busy = live.busy

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
                cid, counter, broadcast, settings = ledger.dispatch(live, idle)
                self._schedule_job(queue, self._make_job(cid, counter, live.round, broadcast, settings), t)

        def evaluate(at: float) -> None:
            record = ledger.evaluate_live(live, at)
            if self.progress:
                self.progress(live.totals.arrivals, total, record)

        # fill free slots: at the start, and after a resume from a commit made while an
        # arrival was being processed (before its slot was refilled) — the same dispatch
        # the uninterrupted run makes right after that arrival
        spent = max_arrivals is not None and live.totals.arrivals >= max_arrivals
        if not spent:
            dispatch(self.clock.now())
        try:
            while queue and not spent:
                ev = queue.peek()
                at = ledger.next_grid_point(live, ev.time)
                if at is not None:
                    # evaluate the model as it is at the grid point, before later events
                    self.clock.advance_to(at)
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
                    ledger.job_failed(live)
                    busy.discard(info["job"].client_id)
                    dispatch(ev.time)
                elif ev.kind == "fetch":
                    st = live.state
                    info["job"].fetched = Broadcast(st.version, st.params, st.buffers)
                    ledger.fetched(live, info["job"].fetched)
                    info["handle"] = exp.executor.submit(info["job"])
                elif ev.kind == "compute_done":
                    self._finish_compute(queue, info, ev.time)
                elif ev.kind == "arrival":
                    job, res = info["job"], info["result"]
                    busy.discard(job.client_id)
                    ledger.arrive(live, res.update, info["up"])
                    outcome = ledger.admit_async(live, res.update, self._online_at_arrival(info, ev.time), res.state)
                    if outcome == MERGED:
                        if ledger.evaluation_due(live):
                            evaluate(self.clock.now())
                        every = cfg.output.checkpoint_every
                        if every and live.round % every == 0:
                            ledger.commit_live(live)
                            self.run_dir.save_checkpoint(self.checkpoint_dict())
                    if max_arrivals is not None and live.totals.arrivals >= max_arrivals:
                        raise _Stop
                    dispatch(ev.time)
        except _Stop:
            pass
        record = ledger.finish_async(live)
        if record is not None and self.progress:
            self.progress(live.totals.arrivals, total, record)


def _drain(queue: EventQueue) -> list:
    out = []
    while queue:
        out.append(queue.pop())
    return out
