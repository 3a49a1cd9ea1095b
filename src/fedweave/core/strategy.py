"""The server side of a method: the :class:`Strategy` protocol and its state.

A method is a pair: a :class:`Strategy` that the server runs and a
:class:`~fedweave.core.client.ClientAlgorithm` that every client runs. The strategy
protocol is ``init → configure → aggregate`` for synchronous rounds, and ``on_update``
for asynchronous arrivals (a default adapts one to the other). Strategy state is a plain
:class:`ServerState` of tensors and numbers, so a server checkpoints and resumes.
Strategies read time from the injected clock in :class:`ServerContext`, virtual in
simulation and wall-clock in deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from .messages import Broadcast, Update
from .params import ParamSpec
from .state_store import ClientStateStore


class Clock(Protocol):
    def now(self) -> float: ...


@dataclass
class ServerState:
    """The global model plus whatever the method keeps between rounds."""

    params: torch.Tensor
    buffers: torch.Tensor
    version: int = 0
    round: int = 0
    # the method's memory: optimizer moments, control variates... (tensors and numbers)
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
    model_factory: Callable[[], nn.Module] | None = None
    # per-client tensors a strategy keeps on the server (FedASMU's last merge direction per
    # device): bounded by executor.state_memory_mb like the clients' store, snapshotted with
    # every commit. Use get/put with whole new dicts; never modify a stored tensor in place.
    client_store: ClientStateStore = field(default_factory=ClientStateStore)
    # executor.device: where a combiner that declares ``device_safe`` combines the stacked
    # [K, P] updates (the server's state itself stays in host memory)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


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


def stack_deltas(updates: list[Update]) -> torch.Tensor:
    """The ``[K, P]`` matrix of client deltas, in the given (client-id) order."""
    return torch.stack([u.delta for u in updates])


def size_weights(updates: list[Update]) -> torch.Tensor:
    return torch.tensor([float(u.num_examples) for u in updates], dtype=torch.float64)


def average_buffers(updates: list[Update], state: ServerState) -> torch.Tensor:
    """Float buffers (BatchNorm statistics) get a plain example-weighted mean, whatever the
    method's weighting: they are statistics, not gradients."""
    if state.buffers.numel() == 0 or not updates:
        return state.buffers
    w = size_weights(updates).to(state.buffers.dtype)
    return (w / w.sum()) @ torch.stack([u.buffers for u in updates])
