"""The executor contract, and the serial executor (the reference every other matches).

Executors decide *where* client jobs run; the engine decides *when* they happen.

The engine submits a job as soon as everything it needs is known (at dispatch, or after
its intermediate fetch) and collects the result when the job's virtual compute ends.
An executor may run submitted jobs at once, lazily, or in batches; every executor gives
the same numbers, because a job's randomness is keyed by ``(seed, client id, job
counter)``, never by the worker that runs it or when. Which executor a config gets is
decided in one place, :func:`fedweave.sim.executors.make_executor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..core.client import ClientJob, JobResult
from .worker import Worker, WorkerSetup


class Executor(ABC):
    @abstractmethod
    def start(self, setup: WorkerSetup) -> None: ...

    @abstractmethod
    def submit(self, job: ClientJob) -> Any:
        """Hand over a job whose inputs are final; returns a handle for :meth:`collect`."""

    @abstractmethod
    def collect(self, handle: Any) -> JobResult:
        """The result of a submitted job (blocking until it is done)."""

    def cancel(self, handle: Any) -> None:
        """The engine no longer needs this job (an over-selected straggler)."""

    def run(self, jobs: list[ClientJob]) -> list[JobResult]:
        handles = [self.submit(job) for job in jobs]
        return [self.collect(h) for h in handles]

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """What ran the jobs, for the run's summary (``executor.kind: auto`` says which)."""
        return type(self).__name__.removesuffix("Executor").lower()


class SerialExecutor(Executor):
    """In-process, one reused model; runs a job when its result is collected."""

    fallback_reason: str | None = None  # set when executor.kind=auto chose serial

    def __init__(self):
        self.worker: Worker | None = None

    def describe(self) -> str:
        return f"serial (auto: {self.fallback_reason})" if self.fallback_reason else "serial"

    def start(self, setup: WorkerSetup) -> None:
        self.worker = Worker(setup)

    def submit(self, job: ClientJob) -> ClientJob:
        return job

    def collect(self, handle: ClientJob) -> JobResult:
        return self.worker.run(handle)
