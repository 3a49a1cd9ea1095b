"""The discrete-event simulator (synchronous rounds).

Each round: select a cohort, let the strategy configure broadcasts, hand the jobs to the
executor (which decides *where* they run), then replay the results on the virtual clock:
every job becomes an arrival event at ``round start + download + compute + upload`` of
that client's device, events are processed in ``(time, sequence)`` order, and the round
ends at its last arrival. Accepted updates are handed to the strategy in client-id
order, never arrival order, so the result does not depend on timing ties.

Bookkeeping is committed once per round (server state, client states, job counters,
clock, totals), so an interruption at any moment leaves the last completed round intact
for a checkpoint, and a resumed run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DivergedError
from ..methods.base import ClientJob, ServerContext, ServerState
from ..metrics import fairness
from ..params import FlatModel
from ..rundir import RunDirectory
from ..train import TrainSettings
from .events import EventQueue, VirtualClock
from .sampling import select_clients
from .state_store import ClientStateStore

CHECKPOINT_FORMAT = 1


class Observer:
    """Sees what happens in a run without changing it (an eavesdropper, a logger).

    Every method is optional to override; observer state goes into checkpoints.
    """

    def on_upload(self, update, round_: int) -> None:
        """An uplink message arrived (in arrival order), accepted or not."""

    def on_round_end(self, state: ServerState, round_: int) -> None:
        """The round's aggregation is done."""

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
    dropped_updates: int = 0


@dataclass
class Committed:
    """Everything that defines the run after a completed round."""

    round: int
    state: ServerState
    client_states: dict
    counters: np.ndarray
    clock: float
    totals: Totals
    history: list = field(default_factory=list)
    wall_time_s: float = 0.0
    observers: list = field(default_factory=list)  # state_dict() of each observer


class Simulator:
    def __init__(self, exp, run_dir: RunDirectory, progress: Callable[[int, int, dict | None], None] | None = None):
        self.exp = exp
        self.cfg = exp.config
        self.run_dir = run_dir
        self.progress = progress
        self.clock = VirtualClock()
        self.store = ClientStateStore()
        self.ctx = ServerContext(
            spec=exp.spec, num_clients=exp.data.num_clients, client_sizes=exp.data.client_sizes(),
            clock=self.clock, seed=self.cfg.seed, server_data=exp.data.server_data(),
        )
        self.eval_model = FlatModel(exp.model_factory(), exp.roles)
        state = exp.strategy.init(exp.initial_params, exp.initial_buffers, self.ctx)
        self.committed = Committed(0, state, {}, np.zeros(exp.data.num_clients, dtype=np.int64), 0.0, Totals())
        self._wall_offset = 0.0
        # one concatenated validation set, so per-client figures cost one forward pass
        val = exp.data.client_val
        self._val_idx = torch.cat(val) if val and sum(len(v) for v in val) else torch.zeros(0, dtype=torch.long)
        self._val_owner = torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(val)]) if len(self._val_idx) else None

    # -- checkpoints --------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        c = self.committed
        return {
            "format": CHECKPOINT_FORMAT,
            "round": c.round,
            "server_state": c.state.to_dict(),
            "client_states": c.client_states,
            "counters": torch.as_tensor(c.counters),
            "clock": c.clock,
            "totals": vars(c.totals).copy(),
            "history": c.history,
            "wall_time_s": c.wall_time_s,
            "torch_rng": torch.get_rng_state(),
            "observers": c.observers,
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.committed = Committed(
            round=int(ckpt["round"]),
            state=ServerState.from_dict(ckpt["server_state"]),
            client_states=dict(ckpt["client_states"]),
            counters=ckpt["counters"].numpy().copy(),
            clock=float(ckpt["clock"]),
            totals=Totals(**ckpt["totals"]),
            history=list(ckpt["history"]),
            wall_time_s=float(ckpt["wall_time_s"]),
            observers=list(ckpt.get("observers", [])),
        )
        for obs, st in zip(self.exp.observers, self.committed.observers):
            obs.load_state_dict(st)
        self._wall_offset = self.committed.wall_time_s
        torch.set_rng_state(ckpt["torch_rng"])

    # -- the run --------------------------------------------------------------------------
    def run(self) -> Committed:
        cfg = self.cfg
        self._t_start = time.perf_counter()
        self.store.load_state_dict(self.committed.client_states)
        self.clock.t = self.committed.clock
        for r in range(self.committed.round, cfg.schedule.rounds):
            record = self._round(r)
            if self.progress:
                self.progress(r + 1, cfg.schedule.rounds, record)
            every = cfg.output.checkpoint_every
            if every and (r + 1) % every == 0 and r + 1 < cfg.schedule.rounds:
                self.run_dir.save_checkpoint(self.checkpoint_dict())
        return self.committed

    def _wall(self) -> float:
        return self._wall_offset + time.perf_counter() - self._t_start

    def _round(self, r: int) -> dict | None:
        exp, cfg, c = self.exp, self.cfg, self.committed
        state = c.state
        self.ctx.round_lr = round_lr(cfg.client, r, cfg.schedule.rounds)
        sched = cfg.schedule
        selected = select_clients(
            sched.sampling, r, self.ctx.num_clients, sched.clients_per_round, cfg.seed,
            self.ctx.client_sizes, sched.sampling_rate,
        )
        broadcasts = exp.strategy.configure(selected, state, self.ctx)
        settings = exp.train_settings(self.ctx.round_lr)
        jobs = [ClientJob(cid, int(c.counters[cid]), r, broadcasts[cid], self.store.get(cid), settings) for cid in selected]
        results = exp.executor.run(jobs)

        # replay on the virtual clock
        t0 = self.clock.now()
        queue = EventQueue()
        for job, res in zip(jobs, results):
            down, up = job.broadcast.num_bytes(), res.update.num_bytes()
            duration = exp.fleet.job_duration(job.client_id, down, res.examples_processed, up)
            queue.push(t0 + duration, "arrival", (job, res, down, up))
        totals = Totals(**vars(c.totals))
        accepted, new_states, train_losses = [], {}, []
        end = t0
        while queue:
            ev = queue.pop()
            job, res, down, up = ev.data
            end = ev.time
            totals.bytes_down += down
            totals.bytes_up += up
            for obs in exp.observers:
                obs.on_upload(res.update, r)
            if not res.update.is_finite():
                totals.dropped_updates += 1
                continue
            totals.client_updates += 1
            accepted.append(res.update)
            new_states[job.client_id] = res.state
            train_losses.append(res.update.metrics.get("loss", float("nan")))
        accepted.sort(key=lambda u: u.client_id)
        for hook in exp.cohort_hooks:
            accepted = hook(accepted, state, r, self.ctx)

        new_state = exp.strategy.aggregate(accepted, state, self.ctx)
        if not bool(torch.isfinite(new_state.params).all()) or not bool(torch.isfinite(new_state.buffers).all()):
            raise DivergedError(f"The global model became non-finite in round {r + 1}; lower client.lr or check the method's settings.")
        new_state.round = r + 1
        for obs in exp.observers:
            obs.on_round_end(new_state, r)

        # commit the round
        counters = c.counters.copy()
        counters[selected] += 1
        for cid, st in new_states.items():
            self.store.put(cid, st)
        self.clock.advance_to(end)
        history = c.history
        record = None
        if (r + 1) % cfg.eval.every == 0 or r + 1 == cfg.schedule.rounds:
            record = self._evaluate(new_state, r + 1, totals, train_losses)
            history = history + [record]
        self.committed = Committed(
            r + 1, new_state, self.store.state_dict(), counters, self.clock.now(), totals, history, self._wall(),
            [obs.state_dict() for obs in exp.observers],
        )
        if record is not None:
            self.run_dir.append_metrics(record)
        return record

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def _load_eval_model(self, state: ServerState) -> torch.nn.Module:
        m = self.eval_model
        m.params.copy_(state.params)
        if m.buffers.numel():
            m.buffers.copy_(state.buffers)
        return m.module

    @torch.no_grad()
    def _evaluate(self, state: ServerState, round_: int, totals: Totals, train_losses: list[float]) -> dict:
        exp, cfg = self.exp, self.cfg
        module = self._load_eval_model(state)
        task = exp.task
        scores = task.evaluate(module, exp.data.x_test, exp.data.y_test, cfg.eval.batch_size)
        if not all(math.isfinite(v) for v in scores.values()):
            raise DivergedError(f"The global model's test loss became non-finite after round {round_}; lower client.lr.")
        record: dict[str, Any] = {
            "round": round_,
            "version": state.version,
            "virtual_time_s": self.clock.now(),
            "wall_time_s": self._wall(),
            task.metric_name: scores[task.metric_name],
            "loss": scores["loss"],
            "train_loss": float(np.nanmean(train_losses)) if train_losses and not all(map(math.isnan, train_losses)) else None,
            "bytes_up": totals.bytes_up,
            "bytes_down": totals.bytes_down,
            "client_updates": totals.client_updates,
            "dropped_updates": totals.dropped_updates,
        }
        for k, v in scores.items():
            record.setdefault(k, v)
        if cfg.eval.per_client and self._val_owner is not None:
            record.update(fairness(self._per_client_scores(module)))
        record.update(exp.strategy.metrics(state))
        for obs in exp.observers:
            record.update(obs.evaluate(module, state))
        return record

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
        n = data.num_clients
        sums = torch.zeros(n, dtype=torch.float64).index_add_(0, self._val_owner, per_example)
        counts = torch.bincount(self._val_owner, minlength=n).to(torch.float64)
        has_val = counts > 0
        return (sums[has_val] / counts[has_val]).numpy()
