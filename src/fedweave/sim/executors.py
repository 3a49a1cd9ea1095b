"""Executors decide *where* client jobs run; the engine decides *when* they happen.

Every executor gives the same numbers for the same jobs: a job's randomness is keyed by
``(seed, client id, job counter)``, never by the worker that runs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..errors import unknown_name
from ..methods.base import ClientJob, JobResult
from .worker import Worker, WorkerSetup


class Executor(ABC):
    @abstractmethod
    def start(self, setup: WorkerSetup) -> None: ...

    @abstractmethod
    def run(self, jobs: list[ClientJob]) -> list[JobResult]:
        """Run jobs; results in the order of ``jobs``."""

    def close(self) -> None:
        pass


class SerialExecutor(Executor):
    """In-process, one reused model: the default and the reference."""

    def __init__(self):
        self.worker: Worker | None = None

    def start(self, setup: WorkerSetup) -> None:
        self.worker = Worker(setup)

    def run(self, jobs: list[ClientJob]) -> list[JobResult]:
        return [self.worker.run(job) for job in jobs]


EXECUTORS = {"serial": "in-process, one reused model (the reference)"}


def make_executor(kind: str) -> Executor:
    if kind == "serial":
        return SerialExecutor()
    raise unknown_name("executor", kind, EXECUTORS)
