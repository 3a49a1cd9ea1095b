"""A worker: one reusable model that runs client jobs.

Each executor owns one or more workers. A worker builds its model once; a job loads
the broadcast into it with a ``copy_``, restores the client's personal segments, trains
with generators derived from ``(seed, purpose, client id, job counter)`` — so results
do not depend on which worker ran the job, or when — and returns the Update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.client import ClientAlgorithm, ClientJob, JobResult
from ..core.params import FlatModel
from ..core.rng import derive_seed, torch_generator
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


class Worker:
    def __init__(self, setup: WorkerSetup):
        torch.set_num_threads(setup.threads)
        self.setup = setup
        self.model = FlatModel(setup.model_factory(), setup.roles)
        self.task = make_task(setup.task_kind)
        self.data = setup.data
        self.algorithm = setup.algorithm
        # a client's personal segments start from the initial model
        self._initial_personal = self.model.personal.clone()
        self._initial_personal_buffers = self.model.personal_buffers.clone()

    def run(self, job: ClientJob) -> JobResult:
        seed, cid = self.setup.seed, job.client_id
        # dropout and the like; the CPU generator alone (torch.manual_seed also walks every
        # accelerator backend, ~60 µs a job)
        torch.default_generator.manual_seed(derive_seed(seed, "torch", cid, job.counter))
        generator = torch_generator(seed, "batches", cid, job.counter)
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
        return result
