"""The client side of a method: :class:`ClientAlgorithm`, the job it runs and its result.

A :class:`ClientJob` is one unit of client work — train from a broadcast, answer with an
:class:`~fedweave.core.messages.Update`. :meth:`ClientAlgorithm.train` runs the standard
local trainer (:func:`fedweave.train.local_train`) with the algorithm's hooks; methods
override the hooks (an extra gradient term, another loss, extra upload tensors, the
client's persistent state) or ``train`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from ..step import add_proximal
from ..train import GradHook, LossFn, TrainResult, TrainSettings, local_train
from .messages import Broadcast, Update
from .params import FlatModel
from .task import Task


class ClientData(Protocol):
    """The dataset a worker trains from (a :class:`fedweave.data.federated.FederatedDataset`)."""

    x: torch.Tensor
    y: torch.Tensor
    client_train: Sequence[torch.Tensor]  # int64 index tensors into x / y
    client_val: Sequence[torch.Tensor]


class ClientWorker(Protocol):
    """What a client algorithm may use of the worker that runs its job
    (:class:`fedweave.sim.worker.Worker` in simulation, the deployed client's worker)."""

    model: FlatModel  # the worker's reusable model, loaded with the job's broadcast
    task: Task
    data: ClientData


@dataclass
class ClientJob:
    """One unit of client work: train from ``broadcast`` and answer with an Update."""

    client_id: int
    counter: int  # this client's job number: keys its random generators
    round: int
    broadcast: Broadcast
    state: dict[str, Any] | None  # the client's persistent state (None: fresh)
    settings: TrainSettings
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

    def grad_hooks(self, job: ClientJob, worker: ClientWorker) -> tuple[GradHook, ...]:
        if self.proximal_mu:
            return (prox_hook(job.broadcast.params, self.proximal_mu),)
        return ()

    def loss_fn(self, job: ClientJob, worker: ClientWorker) -> LossFn | None:
        return None

    @torch.no_grad()
    def personalize(self, model: FlatModel, broadcast: Broadcast, state: dict[str, Any] | None,
                    initial: dict[str, torch.Tensor]) -> None:
        """Load client's own model into ``model`` for personalized evaluation.

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

    def upload_payload(self, job: ClientJob, worker: ClientWorker, result: TrainResult) -> dict[str, Any]:
        return {}

    def train(self, job: ClientJob, worker: ClientWorker, generator: torch.Generator) -> JobResult:
        model = worker.model
        idx = worker.data.client_train[job.client_id]
        result = local_train(
            model, worker.task, worker.data.x, worker.data.y, idx, job.settings, generator,
            self.grad_hooks(job, worker), self.loss_fn(job, worker),
        )
        update = self.build_update(job, worker, result.steps, {"loss": result.mean_loss},
                                   self.upload_payload(job, worker, result))
        return JobResult(update, self.next_state(job, worker, result), result.examples_processed)

    def build_update(self, job: ClientJob, worker: ClientWorker, num_steps: int, metrics: dict[str, float],
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

    def next_state(self, job: ClientJob, worker: ClientWorker, result: TrainResult) -> dict[str, Any] | None:
        return None


def prox_hook(global_params: torch.Tensor, mu: float) -> GradHook:
    """FedProx: the gradient of (μ/2)‖w − w_g‖² over the shared trainable part is μ(w − w_g)
    (:func:`fedweave.step.add_proximal`, the term of the local step rule)."""
    n = global_params.numel()

    def hook(grad: torch.Tensor, trained: torch.Tensor) -> None:
        add_proximal([grad[:n]], [trained[:n]], [global_params], mu)

    return hook
