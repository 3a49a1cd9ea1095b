"""A worker: one reusable model that runs client jobs.

Each executor owns one or more workers. A worker builds its model once; a job loads
the broadcast into it with a ``copy_``, restores the client's personal segments, trains
with generators derived from ``(seed, purpose, client id, job counter)`` — so results
do not depend on which worker ran the job, or when — and returns the Update.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..core.allocator import retain_freed_memory
from ..core.client import ClientAlgorithm, ClientJob, JobResult
from ..core.device import data_fits, resolve_device, to_device
from ..core.params import FlatModel
from ..core.rng import seed_job_generators, torch_generator
from ..data.federated import FederatedDataset
from ..tasks import make_task


@dataclass
class WorkerSetup:
    """Everything a worker needs, picklable so that it can travel to other processes."""

    model_factory: Callable[[], torch.nn.Module]
    roles: dict[str, str]
    task_kind: str
    data: FederatedDataset
    algorithm: ClientAlgorithm
    seed: int
    threads: int = 1
    device: str = "cpu"  # executor.device; resolved where the worker runs
    data_memory_mb: float | None = None  # executor.data_memory_mb
    precision: str = "fp32"  # client.precision (the vectorized executor trains fp32 only)
    deterministic: bool = False  # executor.deterministic (set in each process that trains)
    retain_memory: bool = True  # executor.retain_memory (set in each process that trains)


def place_data(data: FederatedDataset, device: torch.device, budget_mb: float | None) -> FederatedDataset:
    """The federation's training tensors on ``device`` when they fit its budget (see
    :func:`fedweave.core.device.data_fits`), else pinned in host memory so that minibatches
    copy without blocking. The index tensors, test split and labels stay on the host."""
    if device.type == "cpu":
        return data
    nbytes = data.x.numel() * data.x.element_size() + data.y.numel() * data.y.element_size()
    if data_fits(nbytes, device, budget_mb):
        x, y = data.x.to(device), data.y.to(device)
    else:
        x, y = data.x.pin_memory(), data.y.pin_memory()
    return replace(data, x=x, y=y, labels=data.labels)


class Worker:
    def __init__(self, setup: WorkerSetup):
        # per-process settings: a worker may be the first thing to train in its process
        # (a Ray actor, a deployed client)
        torch.set_num_threads(setup.threads)
        if setup.retain_memory:
            retain_freed_memory()
        self.setup = setup
        self.device = resolve_device(setup.device)
        self.model = FlatModel(setup.model_factory().to(self.device), setup.roles)
        self.task = make_task(setup.task_kind)
        self.data = place_data(setup.data, self.device, setup.data_memory_mb)
        self.algorithm = setup.algorithm
        # a client's personal segments start from the initial model
        self._initial_personal = self.model.personal.clone()
        self._initial_personal_buffers = self.model.personal_buffers.clone()
        self._broadcast = None  # (the newest broadcast, its copy on the device)

    def _on_device(self, broadcast):
        """The broadcast on the worker's device, copied once for all the clients that share it."""
        if self._broadcast is None or self._broadcast[0] is not broadcast:
            self._broadcast = (broadcast, to_device(broadcast, self.device))
        return self._broadcast[1]

    def run(self, job: ClientJob) -> JobResult:
        seed, cid = self.setup.seed, job.client_id
        seed_job_generators(seed, cid, job.counter, self.device)  # dropout and the like
        generator = torch_generator(seed, "batches", cid, job.counter)
        on_host = self.device.type == "cpu"
        if not on_host:
            job = replace(job, broadcast=self._on_device(job.broadcast), state=to_device(job.state, self.device))
        m = self.model
        with torch.no_grad():
            m.params.copy_(job.broadcast.params)
            if m.buffers.numel():
                m.buffers.copy_(job.broadcast.buffers)
            state = job.state or {}
            m.personal.copy_(state.get("personal", self._initial_personal))
            m.personal_buffers.copy_(state.get("personal_buffers", self._initial_personal_buffers))
        result = self.algorithm.train(job, self, generator)
        if m.personal.numel() or m.personal_buffers.numel():
            new_state = dict(result.state if result.state is not None else state)
            new_state["personal"] = m.personal.clone()
            new_state["personal_buffers"] = m.personal_buffers.clone()
            result.state = new_state
        return result if on_host else to_device(result, torch.device("cpu"))
