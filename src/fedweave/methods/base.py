"""The strategy (server) and client-algorithm protocols, and the shared server state.

A method is a pair: a :class:`Strategy` that the server runs and a
:class:`ClientAlgorithm` that every client runs. The strategy protocol is
``init → configure → aggregate`` for synchronous rounds, and ``on_update`` for
asynchronous arrivals (a default adapts one to the other). Strategy state is a plain
:class:`ServerState` of tensors and numbers, so a server checkpoints and resumes.
Strategies read time from the injected clock in :class:`ServerContext`, virtual in
simulation and wall-clock in deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..messages import Broadcast, Update
from ..params import ParamSpec
from ..step import add_proximal


class Clock(Protocol):
    def now(self) -> float: ...


@dataclass
class ServerState:
    """The global model plus whatever the method keeps between rounds."""

    params: torch.Tensor
    buffers: torch.Tensor
    version: int = 0
    round: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "buffers": self.buffers, "version": self.version, "round": self.round, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServerState":
        return cls(d["params"], d["buffers"], int(d["version"]), int(d["round"]), dict(d["extra"]))


@dataclass
class ServerContext:
    """What the server side may see: never the clients' data, except its own split."""

    spec: ParamSpec
    num_clients: int
    client_sizes: np.ndarray  # training examples per client, as registered
    clock: Clock
    seed: int
    server_data: tuple[torch.Tensor, torch.Tensor] | None = None
    round_lr: float = 0.0  # the client learning rate of the current round
    # builds a fresh, seeded model (FedLAW evaluates candidate aggregates on the server's split)
    model_factory: Any = None
    # per-client tensors a strategy keeps on the server (FedASMU's last merge direction per
    # device): bounded by executor.state_memory_mb like the clients' store, snapshotted with
    # every commit. Use get/put with whole new dicts; never modify a stored tensor in place.
    client_store: Any = field(default_factory=lambda: _unbounded_store())


def _unbounded_store():
    from ..sim.state_store import ClientStateStore

    return ClientStateStore()


class Strategy:
    """Server side of a method. Subclasses override what their maths needs."""

    name = "strategy"
    modes: tuple[str, ...] = ("sync",)

    def init(self, params: torch.Tensor, buffers: torch.Tensor, ctx: ServerContext) -> ServerState:
        return ServerState(params.clone(), buffers.clone())

    def configure(self, client_ids: list[int], state: ServerState, ctx: ServerContext) -> dict[int, Broadcast]:
        """Messages for the selected clients; by default one shared broadcast."""
        shared = Broadcast(state.version, state.params, state.buffers, self.broadcast_payload(state, ctx))
        return {cid: shared for cid in client_ids}

    def broadcast_payload(self, state: ServerState, ctx: ServerContext) -> dict[str, Any]:
        return {}

    def aggregate(self, updates: list[Update], state: ServerState, ctx: ServerContext) -> ServerState:
        raise NotImplementedError

    def on_update(self, update: Update, state: ServerState, ctx: ServerContext) -> ServerState:
        return self.aggregate([update], state, ctx)

    def metrics(self, state: ServerState) -> dict[str, float]:
        """Method-specific figures added to each evaluation record."""
        return {}


class MergeStrategy(Strategy):
    """An asynchronous strategy that merges every arrival into the global model
    (FedAsync, staleness-aware AFL, FedASMU). ``aggregate`` merges a batch one update
    after another, in the given (client-id) order."""

    modes = ("async",)

    def aggregate(self, updates: list[Update], state: ServerState, ctx: ServerContext) -> ServerState:
        for u in updates:
            state = self.on_update(u, state, ctx)
        return state

    @staticmethod
    def merge(state: ServerState, update: Update, weight: float) -> None:
        """w_g ← (1 − w) w_g + w w_k for the trainable vector and float buffers, as new
        tensors (the engine's snapshots share tensors, so never in place)."""
        x_new = update.params if update.params is not None else state.params + update.delta
        state.params = mix(state.params, x_new.to(state.params.dtype), weight)
        if update.buffers is not None and state.buffers.numel():
            state.buffers = mix(state.buffers, update.buffers, weight)


def mix(x: torch.Tensor, x_new: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 − w) x + w x_new as a new tensor (never in place)."""
    return x + weight * (x_new - x) if x.numel() else x


def stack_deltas(updates: list[Update]) -> torch.Tensor:
    """The ``[K, P]`` matrix of client deltas, in the given (client-id) order."""
    return torch.stack([u.delta for u in updates])


def size_weights(updates: list[Update]) -> torch.Tensor:
    return torch.tensor([float(u.num_examples) for u in updates], dtype=torch.float64)


def average_buffers(updates: list[Update], state: ServerState) -> torch.Tensor:
    """Float buffers (BatchNorm statistics) get a plain example-weighted mean."""
    if state.buffers.numel() == 0 or not updates:
        return state.buffers
    w = size_weights(updates).to(state.buffers.dtype)
    return (w / w.sum()) @ torch.stack([u.buffers for u in updates])


# -- client side -----------------------------------------------------------------------


@dataclass
class ClientJob:
    """One unit of client work: train from ``broadcast`` and answer with an Update."""

    client_id: int
    counter: int  # this client's job number: keys its random generators
    round: int
    broadcast: Broadcast
    state: dict[str, Any] | None  # the client's persistent state (None: fresh)
    settings: Any  # fedweave.train.TrainSettings
    fetch_fraction: float | None = None  # share of local steps after which a fresh model is fetched
    fetched: Broadcast | None = None  # the global model at that instant (set by the engine)


@dataclass
class JobResult:
    update: Update
    state: dict[str, Any] | None  # the client's new persistent state (None: unchanged)
    examples_processed: int  # what the compute time of the device is charged for


class ClientAlgorithm:
    """Client side of a method: the standard local trainer plus overridable hooks.

    Override :meth:`grad_hooks` (extra gradient terms), :meth:`loss_fn` (a different
    loss), :meth:`upload_payload` (extra tensors sent back) or :meth:`train` itself.
    ``stateful`` algorithms keep per-client tensors in the client-state store.
    """

    stateful = False
    upload_full_model = False  # send the new trainable vector instead of the delta

    def __init__(self, objective: str = "plain", mu: float = 0.0):
        self.objective = objective
        self.mu = mu

    @property
    def proximal_mu(self) -> float:
        """μ of FedProx's proximal term in the local step (0.0 for the plain objective)."""
        return self.mu if self.objective == "prox" and self.mu > 0 else 0.0

    def grad_hooks(self, job: ClientJob, worker) -> tuple:
        if self.proximal_mu:
            return (prox_hook(job.broadcast.params, self.proximal_mu),)
        return ()

    def loss_fn(self, job: ClientJob, worker):
        return None

    @torch.no_grad()
    def personalize(self, model, broadcast: Broadcast, state: dict[str, Any] | None, initial: dict[str, torch.Tensor]) -> None:
        """Load client's own model into ``model`` (a FlatModel) for personalized evaluation.

        Default: the global model with the client's personal segments (its initial ones if
        it never trained). Methods with a separate personal model (Ditto) override this.
        """
        model.params.copy_(broadcast.params)
        if model.buffers.numel():
            model.buffers.copy_(broadcast.buffers)
        state = state or {}
        model.personal.copy_(state.get("personal", initial["personal"]))
        model.personal_buffers.copy_(state.get("personal_buffers", initial["personal_buffers"]))

    def fetch_fraction(self, job: ClientJob) -> float | None:
        """Fetch the newest global model after this share of the local steps (FedASMU's
        device-side merge); decided at dispatch so the simulator knows the segment
        durations. None (the default): no intermediate fetch."""
        return None

    def upload_payload(self, job: ClientJob, worker, result) -> dict[str, Any]:
        return {}

    def train(self, job: ClientJob, worker, generator: torch.Generator) -> JobResult:
        from ..train import local_train

        model = worker.model
        idx = worker.data.client_train[job.client_id]
        result = local_train(
            model, worker.task, worker.data.x, worker.data.y, idx, job.settings, generator,
            self.grad_hooks(job, worker), self.loss_fn(job, worker),
        )
        update = self.build_update(job, worker, result.steps, {"loss": result.mean_loss},
                                   self.upload_payload(job, worker, result))
        return JobResult(update, self.next_state(job, worker, result), result.examples_processed)

    def build_update(self, job: ClientJob, worker, num_steps: int, metrics: dict[str, float],
                     payload: dict[str, Any] | None = None) -> Update:
        """The standard upload from the worker's trained model (see :meth:`update_from`)."""
        model = worker.model
        return self.update_from(job, model.params, model.buffers, len(worker.data.client_train[job.client_id]),
                                num_steps, metrics, payload)

    def update_from(self, job: ClientJob, params: torch.Tensor, buffers: torch.Tensor, num_examples: int,
                    num_steps: int, metrics: dict[str, float], payload: dict[str, Any] | None = None) -> Update:
        """The standard upload of a trained model (its trainable vector ``params`` and float
        ``buffers``, neither kept): the delta from the broadcast, the buffers, sizes and
        metrics, plus the full trainable vector when ``upload_full_model``. The serial
        client (through :meth:`build_update`) and the vectorized executor both build their
        updates here."""
        return Update(
            client_id=job.client_id,
            base_version=job.broadcast.version,
            delta=params - job.broadcast.params,
            buffers=buffers.clone(),
            num_examples=num_examples,
            num_steps=num_steps,
            metrics=metrics,
            payload=payload or {},
            params=params.clone() if self.upload_full_model else None,
        )

    def next_state(self, job: ClientJob, worker, result) -> dict[str, Any] | None:
        return None


def prox_hook(global_params: torch.Tensor, mu: float):
    """FedProx: the gradient of (μ/2)‖w − w_g‖² over the shared trainable part is μ(w − w_g)
    (:func:`fedweave.step.add_proximal`, the term of the local step rule)."""
    n = global_params.numel()

    def hook(grad: torch.Tensor, trained: torch.Tensor) -> None:
        add_proximal([grad[:n]], [trained[:n]], [global_params], mu)

    return hook
