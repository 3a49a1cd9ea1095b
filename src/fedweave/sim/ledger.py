"""The round ledger: the bookkeeping of a run, shared by simulation and deployment.

A run has two drivers. The virtual-clock :class:`~fedweave.sim.engine.Simulator` decides
*when* things happen from an event queue and device profiles; the wall-clock
:class:`~fedweave.deploy.server.DeployServer` learns it from real clients over gRPC.
Everything else — what an arrival counts for, what a round commits, when the model is
evaluated, when the run has diverged — is this module's, so the two cannot drift apart:

* **admission** of an arrival: :meth:`RoundLedger.arrive` counts it (bytes, arrivals,
  observers' ``on_upload``); :meth:`RoundLedger.admit` (sync) or
  :meth:`RoundLedger.admit_async` (async/buffered) drops it when the driver found it
  invalid (offline device; malformed upload), when it is non-finite, or when its
  staleness (:func:`~fedweave.aggregate.staleness.staleness`) exceeds
  ``schedule.max_staleness``; else it is accepted and counted;
* **aggregation** of a *copy* of the committed state (strategies may work in place), the
  finiteness check of the new global model, and divergence: a non-finite model, or a
  sync round whose every arrival was non-finite, raises :class:`~fedweave.errors.DivergedError`
  before anything is committed;
* **evaluation** every ``eval.every`` rounds (versions) or on the ``eval.every_s`` time
  grid — virtual seconds in simulation, wall-clock seconds in deployment; a grid point
  passed during a sync round sees the model of the last completed round;
* **commits** of a consistent snapshot (:class:`Committed`), checkpoint contents and
  restore, the run's :class:`Totals`, observers, and the client learning-rate schedule
  (``client.lr_schedule``, set in ``ServerContext.round_lr``).

Who calls what::

    sync round        open_round → (arrive, admit)* → job_failed / late / fetched
                      → aggregate_round → [driver moves its clock] → commit_round
    async / buffered  begin_async → dispatch* → (arrive, admit_async)*
                      → evaluate_live when evaluation_due / next_grid_point → finish_async

The driver keeps its transport (event queue and executors; gRPC streams and waiting),
the choice of candidates (devices online; clients connected) and its checkpoint policy.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..aggregate.staleness import staleness
from ..core.device import data_fits, resolve_device
from ..core.errors import ConfigError, DivergedError
from ..core.messages import Broadcast, Update, tensor_is_finite
from ..core.params import FlatModel
from ..core.state_store import ClientStateStore
from ..core.strategy import ServerContext, ServerState
from ..metrics import fairness
from ..rundir import RunDirectory
from .sampling import pick_idle, select_clients

CHECKPOINT_FORMAT = 2

# what admit_async says happened to an arrival
DROPPED = "dropped"  # invalid, non-finite or too stale
HELD = "held"  # accepted into the buffer (buffered mode), not merged yet
MERGED = "merged"  # a new global version


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
    dropped_updates: int = 0  # non-finite, failed, offline, malformed or too stale
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


@dataclass
class SyncRound:
    """The bookkeeping of one open synchronous round (``round`` is its 0-based index).
    Nothing in it is committed until :meth:`RoundLedger.commit_round`."""

    round: int
    selected: list[int]
    keep: int  # accepted updates that close the round (K with over-selection, else all)
    broadcasts: dict[int, Broadcast]
    job_counters: dict[int, int]  # each selected client's job counter for this round
    settings: Any  # the round's TrainSettings
    lr: float  # the round's client learning rate
    counters: np.ndarray  # job counters after this round's dispatches
    totals: Totals
    participation: np.ndarray
    accepted: list[Update] = field(default_factory=list)  # in arrival order
    client_states: dict[int, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    nonfinite: int = 0
    aggregated: int = 0  # updates the strategy received (after the cohort hooks)


@dataclass
class LiveRun:
    """The working bookkeeping of an async/buffered run between commits."""

    round: int  # versions merged
    state: ServerState
    counters: np.ndarray
    totals: Totals
    history: list
    participation: np.ndarray
    busy: set
    buffer: list
    dispatches: int
    next_eval_s: float | None
    done: bool
    pending_losses: list  # train losses since the last evaluation


class RoundLedger:
    """The bookkeeping of one run: see the module docstring for who calls what.

    ``clock`` is the driver's (virtual or wall-clock seconds; ``wall_clock`` says which).
    ``committed`` is the last consistent snapshot; ``store`` holds the clients'
    persistent states, ``server_store`` what strategies keep per client on the server.
    """

    def __init__(self, exp, run_dir: RunDirectory, clock, *, wall_clock: bool = False):
        self.exp = exp
        self.cfg = exp.config
        self.run_dir = run_dir
        self.clock = clock
        self.wall_clock = wall_clock
        budget = self.cfg.executor.state_memory_mb
        limit = None if budget is None else int(budget * 2**20)
        self.store = ClientStateStore(limit, run_dir.path / "client_state" if limit is not None else None)
        # what strategies keep per client on the server, under the same budget
        self.server_store = ClientStateStore(limit, run_dir.path / "server_state" if limit is not None else None)
        self.ctx = ServerContext(
            spec=exp.spec, num_clients=exp.data.num_clients, client_sizes=exp.data.client_sizes(),
            clock=clock, seed=self.cfg.seed, server_data=exp.data.server_data(),
            model_factory=exp.model_factory, client_store=self.server_store,
            device=resolve_device(self.cfg.executor.device),
        )
        self.eval_model = FlatModel(exp.model_factory(), exp.roles)
        # the global model's test evaluation runs on executor.device (a copy of the host model)
        self.eval_device = self.ctx.device
        self._device_eval: torch.nn.Module | None = None  # the eval model's copy on executor.device
        self._device_data: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._validation_host: tuple[torch.Tensor, torch.Tensor] | None = None  # gathered on first use
        self.initial_personal = {"personal": self.eval_model.personal.clone(),
                                 "personal_buffers": self.eval_model.personal_buffers.clone()}
        state = exp.strategy.init(exp.initial_params, exp.initial_buffers, self.ctx)
        n = exp.data.num_clients
        self.committed = Committed(0, state, {}, np.zeros(n, dtype=np.int64), 0.0, Totals(),
                                   participation=np.zeros(n, dtype=np.int64), next_eval_s=self.cfg.eval.every_s)
        self._wall_offset = 0.0
        self._t_start: float | None = None
        self._checkpointed: dict = {}
        self._checkpointed_server: dict = {}
        self._live_extras: Callable[[], dict] = dict
        # one concatenated validation set, so per-client figures cost one forward pass
        val = exp.data.client_val
        self._val_idx = torch.cat(val) if val and sum(len(v) for v in val) else torch.zeros(0, dtype=torch.long)
        self._val_owner = (
            torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(val)]) if len(self._val_idx) else None
        )

    # -- time ---------------------------------------------------------------------------------
    def set_clock(self, clock) -> None:
        """Use another clock (the deployment's, which continues from a checkpoint's time)."""
        self.clock = clock
        self.ctx.clock = clock

    def start(self) -> None:
        """Begin (or continue) the run from ``committed``: the stores hold its states and
        the wall-time counter runs on from its ``wall_time_s``."""
        self._t_start = time.perf_counter()
        self.store.load_state_dict(self.committed.client_states)
        self.server_store.load_state_dict(self.committed.server_client_states)

    def wall(self) -> float:
        start = self._t_start if self._t_start is not None else time.perf_counter()
        return self._wall_offset + time.perf_counter() - start

    def budget_spent(self) -> bool:
        """``schedule.max_time_s`` (seconds of the ledger's clock) is reached."""
        limit = self.cfg.schedule.max_time_s
        return limit is not None and self.clock.now() >= limit

    # -- the client learning-rate schedule ----------------------------------------------------
    def settings(self, round_: int):
        """The round's TrainSettings; sets ``ctx.round_lr`` for the strategy."""
        self.ctx.round_lr = round_lr(self.cfg.client, round_, self.cfg.schedule.rounds)
        return self.exp.train_settings(self.ctx.round_lr)

    # -- checkpoints and commits -------------------------------------------------------------
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

    def commit(self, **live) -> None:
        """Make the live bookkeeping the committed snapshot (copies where the live objects
        keep changing). Fields not given keep their defaults (async-only ones) or, for
        ``next_eval_s``, the committed value."""
        c = self.committed
        previous, previous_server = c.client_states, c.server_client_states
        self.committed = Committed(
            round=live["round"], state=copy_state(live["state"]), client_states=self.store.state_dict(),
            counters=live["counters"].copy(), clock=self.clock.now(), totals=copy.copy(live["totals"]),
            history=list(live["history"]), wall_time_s=self.wall(),
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

    # -- arrivals (both modes) -----------------------------------------------------------------
    def arrive(self, progress: SyncRound | LiveRun, update: Update, num_bytes: int | None = None) -> None:
        """An upload arrived (in arrival order), whatever becomes of it: count its bytes,
        count it as an arrival, show it to the observers."""
        totals = progress.totals
        totals.bytes_up += update.num_bytes() if num_bytes is None else num_bytes
        totals.arrivals += 1
        for obs in self.exp.observers:
            obs.on_upload(update, progress.round)

    @staticmethod
    def job_failed(progress: SyncRound | LiveRun, count: int = 1) -> None:
        """Jobs that failed before uploading (simulated dropouts)."""
        progress.totals.dropped_updates += count

    @staticmethod
    def late(rnd: SyncRound, count: int = 1) -> None:
        """Selected clients whose update did not arrive in time (deadline, or beyond the
        first K with over-selection)."""
        rnd.totals.late_updates += count

    @staticmethod
    def fetched(progress: SyncRound | LiveRun, broadcast: Broadcast) -> None:
        """A job fetched the current global model part-way (FedASMU)."""
        progress.totals.bytes_down += broadcast.num_bytes()

    # -- synchronous rounds ---------------------------------------------------------------------
    def open_round(self, r: int, candidates: np.ndarray | None) -> SyncRound:
        """Round ``r``: its learning rate, its cohort drawn by ``select_clients`` among
        ``candidates`` (None: every client), over-selecting ⌈(1+x)K⌉ if asked, their
        broadcasts and job counters, and the bytes sent."""
        cfg, c, ctx = self.cfg, self.committed, self.ctx
        sched = cfg.schedule
        settings = self.settings(r)
        k = sched.clients_per_round
        dispatch_k = math.ceil((1 + sched.over_select) * k) if sched.over_select else k
        selected = select_clients(sched.sampling, r, ctx.num_clients, dispatch_k, cfg.seed, ctx.client_sizes,
                                  sched.sampling_rate, candidates)
        keep = k if sched.over_select else len(selected)
        broadcasts = self.exp.strategy.configure(selected, c.state, ctx)
        counters = c.counters.copy()
        job_counters = {}
        for cid in selected:
            job_counters[cid] = int(counters[cid])
            counters[cid] += 1
        totals = copy.copy(c.totals)
        for cid in selected:
            totals.bytes_down += broadcasts[cid].num_bytes()
        return SyncRound(r, list(selected), keep, broadcasts, job_counters, settings, float(ctx.round_lr), counters,
                         totals, c.participation.copy())

    @staticmethod
    def admit(rnd: SyncRound, update: Update | None, valid: bool = True, client_state: dict | None = None) -> bool:
        """Sync: accept an arrival for the round's aggregation, or drop it. ``valid`` is the
        driver's verdict (the device was online at arrival; the upload was well-formed);
        finiteness is judged here. Returns whether it was accepted."""
        totals = rnd.totals
        if not valid or update is None:
            totals.dropped_updates += 1
            return False
        if not update.is_finite():
            totals.dropped_updates += 1
            rnd.nonfinite += 1
            return False
        totals.client_updates += 1
        rnd.participation[update.client_id] += 1
        rnd.accepted.append(update)
        rnd.client_states[update.client_id] = client_state
        rnd.losses.append(update.metrics.get("loss", float("nan")))
        return True

    def aggregate_round(self, rnd: SyncRound) -> ServerState:
        """The accepted updates in client-id order, through the cohort hooks, aggregated
        into a copy of the committed state (the committed state stays that of the last
        completed round until :meth:`commit_round`). Raises DivergedError when every
        arrival of the round was non-finite, or when the new model is non-finite."""
        exp, c, r = self.exp, self.committed, rnd.round
        state = c.state
        accepted = sorted(rnd.accepted, key=lambda u: u.client_id)
        for hook in exp.cohort_hooks:
            accepted = hook(accepted, state, r, self.ctx)
        rnd.aggregated = len(accepted)
        if not accepted and rnd.nonfinite and rnd.nonfinite == rnd.totals.arrivals - c.totals.arrivals:
            raise DivergedError(f"Every update of round {r + 1} was non-finite; lower client.lr or check the method's settings.")
        # strategies may update the state in place: aggregate a copy
        new_state = exp.strategy.aggregate(accepted, copy_state(state), self.ctx)
        self.check_finite(new_state, f"round {r + 1}")
        new_state.round = r + 1
        for obs in exp.observers:
            obs.on_round_end(new_state, r)
        for cid, st in rnd.client_states.items():
            self.store.put(cid, st)
        return new_state

    def commit_round(self, rnd: SyncRound, new_state: ServerState, extra: dict | None = None) -> dict | None:
        """Evaluate and commit a round whose end the driver's clock now shows: every point
        of the ``eval.every_s`` grid up to now sees the model of the last completed round
        (with its figures); the new model is evaluated every ``eval.every`` rounds (with
        ``every_s``: never in between), after the last round and when ``max_time_s`` is
        reached. ``extra`` figures go into the new model's record. Appends the records
        to ``metrics.jsonl``; returns the last one (None if none)."""
        cfg, c, r = self.cfg, self.committed, rnd.round
        sched = cfg.schedule
        records = []
        next_eval_s = c.next_eval_s
        if cfg.eval.every_s is not None:
            now = self.clock.now()
            while next_eval_s <= now:
                records.append(self.evaluate(c.state, r, c.totals, [], at_time=next_eval_s))
                next_eval_s += cfg.eval.every_s
            due = r + 1 == sched.rounds or self.budget_spent()
        else:
            due = (r + 1) % cfg.eval.every == 0 or r + 1 == sched.rounds or self.budget_spent()
        if due:
            record = self.evaluate(new_state, r + 1, rnd.totals, rnd.losses)
            record.update(extra or {})
            records.append(record)
        self.commit(round=r + 1, state=new_state, counters=rnd.counters, totals=rnd.totals,
                    history=c.history + records, participation=rnd.participation, next_eval_s=next_eval_s)
        for record in records:
            self.run_dir.append_metrics(record)
        return records[-1] if records else None

    # -- asynchronous and buffered modes -------------------------------------------------------
    def begin_async(self, extras: Callable[[], dict] = dict) -> LiveRun:
        """A working copy of the committed bookkeeping. ``extras()`` gives what the driver
        adds to every commit (the engine's pending event queue)."""
        c = self.committed
        self._live_extras = extras
        return LiveRun(round=c.round, state=c.state, counters=c.counters.copy(), totals=copy.copy(c.totals),
                       history=list(c.history), participation=c.participation.copy(), busy=set(c.busy),
                       buffer=list(c.buffer), dispatches=c.dispatches, next_eval_s=c.next_eval_s, done=c.done,
                       pending_losses=list(c.pending_losses))

    def commit_live(self, live: LiveRun) -> None:
        self.commit(round=live.round, state=live.state, counters=live.counters, totals=live.totals,
                    history=live.history, participation=live.participation, busy=sorted(live.busy),
                    buffer=live.buffer, dispatches=live.dispatches, next_eval_s=live.next_eval_s, done=live.done,
                    pending_losses=live.pending_losses, **self._live_extras())

    def dispatch(self, live: LiveRun, idle) -> tuple[int, int, Broadcast, Any]:
        """Give a free slot to one of the ``idle`` clients (uniformly at random from
        ``(seed, "dispatch", dispatch number)``): returns its id, job counter, broadcast
        and the settings of the current version's round."""
        cid = pick_idle(self.cfg.seed, live.dispatches, idle)
        live.dispatches += 1
        settings = self.settings(live.round)
        broadcast = self.exp.strategy.configure([cid], live.state, self.ctx)[cid]
        counter = int(live.counters[cid])
        live.counters[cid] += 1
        live.totals.bytes_down += broadcast.num_bytes()
        live.busy.add(cid)
        return cid, counter, broadcast, settings

    def admit_async(self, live: LiveRun, update: Update | None, valid: bool = True,
                    client_state: dict | None = None) -> str:
        """Async/buffered: drop an arrival that is invalid (the driver's verdict),
        non-finite or staler than ``schedule.max_staleness``; else count it and merge it
        at once (``strategy.on_update``) or buffer it until ``buffer_size`` arrivals are
        merged together (``strategy.aggregate``, in client-id order, after the cohort
        hooks). Returns :data:`DROPPED`, :data:`HELD` or :data:`MERGED`."""
        exp, sched, totals = self.exp, self.cfg.schedule, live.totals
        if not valid or update is None or not update.is_finite():
            totals.dropped_updates += 1
            return DROPPED
        state = live.state
        tau = staleness(update, state)
        if sched.max_staleness is not None and tau > sched.max_staleness:
            totals.dropped_updates += 1
            return DROPPED
        totals.client_updates += 1
        totals.staleness_sum += tau
        totals.staleness_count += 1
        totals.staleness_max = max(totals.staleness_max, tau)
        live.participation[update.client_id] += 1
        self.store.put(update.client_id, client_state)
        live.pending_losses.append(update.metrics.get("loss", float("nan")))
        if sched.mode == "buffered":
            live.buffer.append(update)
            if len(live.buffer) < (sched.buffer_size or sched.clients_per_round):
                return HELD
            batch = sorted(live.buffer, key=lambda u: u.client_id)
            live.buffer = []
            for hook in exp.cohort_hooks:
                batch = hook(batch, state, live.round, self.ctx)
            new_state = exp.strategy.aggregate(batch, copy_state(state), self.ctx)
        else:
            new_state = exp.strategy.on_update(update, copy_state(state), self.ctx)
        self.check_finite(new_state, f"version {new_state.version}")
        live.round += 1
        new_state.round = live.round
        live.state = new_state
        for obs in exp.observers:
            obs.on_round_end(new_state, live.round)
        return MERGED

    def evaluation_due(self, live: LiveRun) -> bool:
        """The version just merged is due an evaluation under ``eval.every`` (never with
        ``eval.every_s``, whose grid :meth:`next_grid_point` walks)."""
        return self.cfg.eval.every_s is None and live.round % self.cfg.eval.every == 0

    def next_grid_point(self, live: LiveRun, t: float) -> float | None:
        """The next point of the ``eval.every_s`` grid if it is at or before ``t`` (the time
        of the next thing to happen), moving the grid on; else None. The model is
        evaluated at that point before anything later happens."""
        every_s = self.cfg.eval.every_s
        if every_s is None or t < live.next_eval_s:
            return None
        at = live.next_eval_s
        live.next_eval_s = at + every_s
        return at

    def evaluate_live(self, live: LiveRun, at: float | None = None) -> dict:
        """Evaluate the live model (at time ``at``; default now), commit, append the record."""
        record = self.evaluate(live.state, live.round, live.totals, live.pending_losses, at_time=at)
        live.pending_losses.clear()
        live.history.append(record)
        self.commit_live(live)
        self.run_dir.append_metrics(record)
        return record

    def finish_async(self, live: LiveRun) -> dict | None:
        """The end of an async/buffered run: a partial buffer is not merged (FedBuff merges
        full buffers only); the final model is evaluated unless the last record already
        shows it (on a virtual clock: at this very time). Returns the new record, if any."""
        live.done = True
        last = live.history[-1] if live.history else None
        now = self.clock.now()
        if (last is None or last.get("version") != live.state.version
                or (not self.wall_clock and last["virtual_time_s"] < now)):
            return self.evaluate_live(live, now)
        self.commit_live(live)
        return None

    # -- divergence ------------------------------------------------------------------------------
    @staticmethod
    def check_finite(state: ServerState, where: str) -> None:
        if not tensor_is_finite(state.params) or not tensor_is_finite(state.buffers):
            raise DivergedError(f"The global model became non-finite at {where}; lower client.lr or check the method's settings.")

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def load_eval_model(self, state: ServerState) -> torch.nn.Module:
        """Load the global model ``state`` (with the initial personal parts) into the
        evaluation model; returns its module."""
        m = self.eval_model
        m.params.copy_(state.params)
        if m.buffers.numel():
            m.buffers.copy_(state.buffers)
        if m.personal.numel() or m.personal_buffers.numel():
            # the global model has no personal parts: the initial ones, not those of the
            # client that personalized evaluation loaded last
            m.personal.copy_(self.initial_personal["personal"])
            m.personal_buffers.copy_(self.initial_personal["personal_buffers"])
        return m.module

    def _evaluates_on_host(self) -> bool:
        return self.eval_device.type == "cpu"

    def _on_eval_device(self, x: torch.Tensor, y: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``x, y`` on ``executor.device`` (moved once, kept under ``key``), or None when
        evaluation stays on the host: on the CPU, or when they do not fit the data budget."""
        dev = self.eval_device
        if self._evaluates_on_host():
            return None
        if key not in self._device_data:
            nbytes = x.numel() * x.element_size() + y.numel() * y.element_size()
            self._device_data[key] = (x.to(dev), y.to(dev)) if data_fits(nbytes, dev, self.cfg.executor.data_memory_mb) else None
        return self._device_data[key]

    def _device_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """A copy of the host model on the eval device holding ``module``'s current state."""
        if self._device_eval is None:
            self._device_eval = copy.deepcopy(module).to(self.eval_device)
        self._device_eval.load_state_dict(module.state_dict())
        self._device_eval.train(module.training)
        return self._device_eval

    @torch.no_grad()
    def test_scores(self, module: torch.nn.Module) -> dict:
        """The task's figures of ``module`` (the host evaluation model) on the test split, on
        ``executor.device``: on a CUDA device a copy of the model evaluates the test split
        there in batches of ``eval.batch_size`` when the split fits the data budget, else the
        host model evaluates it."""
        exp, x, y, bs = self.exp, self.exp.data.x_test, self.exp.data.y_test, self.cfg.eval.batch_size
        placed = self._on_eval_device(x, y, "test")
        if placed is None:
            return exp.task.evaluate(module, x, y, bs)
        return exp.task.evaluate(self._device_module(module), *placed, bs)

    def _validation(self) -> tuple[bool, torch.Tensor, torch.Tensor]:
        """The clients' concatenated validation examples (``_val_idx`` order, gathered
        once), on the eval device when they fit there (then with True as the first item),
        else on the host."""
        if self._validation_host is None:
            self._validation_host = (self.exp.data.x[self._val_idx], self.exp.data.y[self._val_idx])
        x, y = self._validation_host
        placed = self._on_eval_device(x, y, "validation")
        return (True, *placed) if placed is not None else (False, x, y)

    def evaluate(self, state: ServerState, round_: int, totals: Totals, train_losses: list[float],
                 at_time: float | None = None) -> dict:
        """The evaluation record of ``state`` (after ``round_`` rounds/versions) at time
        ``at_time`` (default now). Raises DivergedError on a non-finite test loss."""
        exp, cfg = self.exp, self.cfg
        module = self.load_eval_model(state)
        task = exp.task
        scores = self.test_scores(module)
        if not all(math.isfinite(v) for v in scores.values()):
            raise DivergedError(f"The global model's test loss became non-finite after round {round_}; lower client.lr.")
        finite_losses = [v for v in train_losses if not math.isnan(v)]
        record: dict[str, Any] = {
            "round": round_,
            "version": state.version,
            "virtual_time_s": self.clock.now() if at_time is None else at_time,
            "wall_time_s": self.wall(),
            task.metric_name: scores[task.metric_name],
            "loss": scores["loss"],
            "train_loss": float(np.mean(finite_losses)) if finite_losses else None,
            "bytes_up": totals.bytes_up,
            "bytes_down": totals.bytes_down,
            "client_updates": totals.client_updates,
            "dropped_updates": totals.dropped_updates,
            "late_updates": totals.late_updates,
        }
        if cfg.schedule.mode != "sync":
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
            self.load_eval_model(state)  # observers below see the global model
        record.update(exp.strategy.metrics(state))
        # observers see the global model where the test split was evaluated (executor.device)
        observed = module if self._evaluates_on_host() else self._device_module(module)
        for obs in exp.observers:
            record.update(obs.evaluate(observed, state))
        return record

    @torch.no_grad()
    def _personalized_scores(self, state: ServerState) -> dict[str, float]:
        """Each client's own model (the method's personalization) on its held-out split,
        on the eval device when the validation examples fit there."""
        data, task, exp = self.exp.data, self.exp.task, self.exp
        broadcast = Broadcast(state.version, state.params, state.buffers)
        module = self.eval_model.module
        module.eval()
        on_device, xv, yv = self._validation()
        scores, start = [], 0
        for cid, val in enumerate(data.client_val):
            if len(val) == 0:
                continue
            exp.algorithm.personalize(self.eval_model, broadcast, self.store.get(cid), self.initial_personal)
            model = self._device_module(module) if on_device else module
            part = slice(start, start + len(val))
            scores.append(task.client_score(task.per_example_score(model(xv[part]), yv[part])))
            start += len(val)
        module.train()
        figures = fairness(np.array(scores), task.higher_is_better)
        return {k.replace("client_acc", "personalized_acc"): v for k, v in figures.items() if k.startswith("client_acc")}

    @torch.no_grad()
    def _per_client_scores(self, module: torch.nn.Module) -> np.ndarray:
        task = self.exp.task
        was_training = module.training
        module.eval()
        on_device, xv, yv = self._validation()
        model = self._device_module(module) if on_device else module
        parts = []
        bs = self.cfg.eval.batch_size
        for start in range(0, len(xv), bs):
            parts.append(task.per_example_score(model(xv[start : start + bs]), yv[start : start + bs]))
        module.train(was_training)
        per_example = torch.cat(parts).cpu()
        # the validation set is concatenated client by client: split it back
        counts = [c for c in torch.bincount(self._val_owner).tolist() if c > 0]
        return np.array([task.client_score(chunk) for chunk in torch.split(per_example, counts)])


def copy_state(state: ServerState) -> ServerState:
    """A snapshot that later (non-in-place) strategy updates cannot change."""
    return ServerState(state.params, state.buffers, state.version, state.round, dict(state.extra))
