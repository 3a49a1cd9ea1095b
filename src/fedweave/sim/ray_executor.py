"""The Ray executor: client jobs on long-lived Ray actors, on one machine or a cluster.

* ``executor.address`` joins an existing cluster (``auto`` or ``ray://host:port``);
  without it a local Ray runtime is started with ``num_workers`` CPUs.
* The worker setup — dataset tensors, model factory, client algorithm — is put into the
  object store **once**; every actor builds its reusable model from it at start.
* Each distinct broadcast (the global model of a round or version) is put into the
  object store once and passed to the actors by reference, not copied per client.
* Jobs go to the actor with the fewest outstanding jobs; which actor runs a job never
  changes its numbers (generators are keyed by seed, client id and job counter), so the
  results are bit-for-bit those of the serial executor for the same ``executor.threads``.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

from ..core.client import ClientJob, JobResult
from ..core.device import set_deterministic
from ..core.errors import ConfigError
from .executor_base import Executor
from .worker import Worker, WorkerSetup


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('executor.kind=ray needs Ray: pip install "fedweave[ray]" (or use executor.kind=serial).') from None
    return ray


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Refuse an unreachable ``executor.address`` at once. ``ray.init`` would retry the
    connection for minutes; a TCP connect to the head's port answers in seconds.
    ``auto`` (and no address) are left to Ray, which fails fast when no cluster runs."""
    if not address or address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"executor.address={address!r} is not 'auto' or HOST:PORT (e.g. 10.0.0.1:6379 or "
                          "ray://10.0.0.1:10001).")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"Cannot reach Ray at executor.address={address!r}: {exc}. Start the cluster with "
                          "`ray start --head` on that node (and check host, port and firewall), use "
                          "executor.address=auto on a cluster node, or executor.kind=serial.") from None


class _RayWorkerImpl:
    """The actor body: one Worker with its reusable model, and the few newest broadcasts.

    A broadcast arrives as an object reference in a list (so Ray does not resolve it for
    every task): the actor fetches and unpickles each global model once, not once per
    client it trains from it (≈ 1.4 ms per fetch for W1's 0.8 MB model)."""

    CACHED_BROADCASTS = 4  # async modes train from a few versions at once

    def __init__(self, setup: WorkerSetup):
        if setup.deterministic:  # the driver's setting does not reach the actor's process
            set_deterministic(True)
        self.worker = Worker(setup)  # which keeps freed memory in this process too (retain_memory)
        self.broadcasts: dict[Any, Any] = {}

    def run(self, job: ClientJob, boxed_ref: list) -> JobResult:
        import ray

        (ref,) = boxed_ref
        broadcast = self.broadcasts.pop(ref, None)
        if broadcast is None:
            broadcast = ray.get(ref)
            while len(self.broadcasts) >= self.CACHED_BROADCASTS:
                self.broadcasts.pop(next(iter(self.broadcasts)))
        self.broadcasts[ref] = broadcast  # most recently used last
        return self.worker.run(replace(job, broadcast=broadcast))


def actor_resources(gpus_per_worker: float) -> dict[str, float]:
    """The resources one actor reserves: a CPU, and ``executor.gpus_per_worker`` GPUs
    (a fraction shares a GPU between actors, as Flower's client resources do). Ray then
    sets each actor's ``CUDA_VISIBLE_DEVICES``, so ``cuda`` in the actor is its own GPU."""
    resources: dict[str, float] = {"num_cpus": 1}
    if gpus_per_worker:
        resources["num_gpus"] = gpus_per_worker
    return resources


def check_gpu_share(gpus_per_worker: float) -> None:
    """Ray reserves a fraction of one GPU or a whole number of GPUs, nothing in between."""
    if gpus_per_worker > 1 and gpus_per_worker != int(gpus_per_worker):
        raise ConfigError(f"executor.gpus_per_worker={gpus_per_worker:g}: Ray takes a fraction of one GPU or a "
                          "whole number of GPUs. Allowed values: 0 (actors on their CPUs), a fraction up to 1 to "
                          "share a GPU (0.25: four actors per GPU), or a whole number (2: two GPUs per actor).")


def plan_actors(num_workers: int | None, gpus_per_worker: float, cpus: float, gpus: float) -> int:
    """How many actors to start on a Ray runtime of ``cpus`` CPUs and ``gpus`` GPUs, each
    reserving one CPU and ``gpus_per_worker`` GPUs; a :class:`ConfigError` when they cannot
    all be placed. Ray would otherwise leave an actor it cannot place pending for ever, and
    the run would wait on its first job without a word."""
    check_gpu_share(gpus_per_worker)
    if gpus_per_worker > gpus:
        allowed = ("Allowed values: 0 (actors on their CPUs), as this runtime has no GPU" if not gpus else
                   "Allowed values: 0 (actors on their CPUs), a fraction up to 1 to share a GPU (0.25: four actors "
                   f"per GPU), or a whole number of GPUs up to the {gpus:g} the runtime has")
        raise ConfigError(f"executor.gpus_per_worker={gpus_per_worker:g} asks each Ray actor for "
                          f"{gpus_per_worker:g} GPU(s), but the Ray runtime has {gpus:g}: no actor could start. "
                          f"{allowed}.")
    fit_cpu = max(1, int(cpus))
    fit = fit_cpu if not gpus_per_worker else min(fit_cpu, int(gpus / gpus_per_worker + 1e-9))
    if num_workers is None:
        return fit
    if num_workers > fit:
        need = (f"{num_workers} actors need {num_workers} CPUs" if not gpus_per_worker else
                f"{num_workers} actors of {gpus_per_worker:g} GPU each need {num_workers * gpus_per_worker:g} GPUs "
                f"and {num_workers} CPUs")
        raise ConfigError(f"executor.num_workers={num_workers}: {need}, but the Ray runtime has {gpus:g} GPU(s) "
                          f"and {cpus:g} CPU(s), so at most {fit} can run at once and the others would never "
                          f"start. Lower executor.num_workers to {fit} or less"
                          f"{', or executor.gpus_per_worker' if gpus_per_worker else ''}.")
    return num_workers


class RayExecutor(Executor):
    def __init__(self, address: str | None = None, num_workers: int | None = None, threads: int = 1,
                 gpus_per_worker: float = 0.0):
        self.ray = import_ray()
        self.gpus_per_worker = gpus_per_worker  # Ray's num_gpus per actor: 0.25 puts four actors on a GPU
        self.address = address
        self.num_workers = num_workers
        self.threads = threads
        self.actors: list[Any] = []
        self.outstanding: list[int] = []
        self._broadcast_refs: dict[int, tuple[Any, Any]] = {}  # id(broadcast) -> (broadcast, ref)
        self._started_ray = False

    def start(self, setup: WorkerSetup) -> None:
        ray = self.ray
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(num_cpus=self.num_workers, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"Cannot start or reach Ray at {self.address or 'a local runtime'}: {exc}. "
                                  "Check executor.address (e.g. 'auto' after `ray start --head`), or use executor.kind=serial.") from None
            self._started_ray = True
        resources = ray.cluster_resources()
        try:
            n = plan_actors(self.num_workers, self.gpus_per_worker, resources.get("CPU", 1), resources.get("GPU", 0))
        except ConfigError:
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False
            raise
        setup_ref = ray.put(setup)  # the dataset enters the object store once
        actor_cls = ray.remote(**actor_resources(self.gpus_per_worker))(_RayWorkerImpl)
        self.actors = [actor_cls.remote(setup_ref) for _ in range(n)]
        self.outstanding = [0] * n

    def _broadcast_ref(self, broadcast):
        key = id(broadcast)
        hit = self._broadcast_refs.get(key)
        if hit is None or hit[0] is not broadcast:
            if len(self._broadcast_refs) > 64:  # old versions are no longer needed
                self._broadcast_refs.clear()
            hit = (broadcast, self.ray.put(broadcast))
            self._broadcast_refs[key] = hit
        return hit[1]

    def submit(self, job: ClientJob):
        i = min(range(len(self.actors)), key=lambda a: (self.outstanding[a], a))
        self.outstanding[i] += 1
        light = replace(job, broadcast=None)
        ref = self.actors[i].run.remote(light, [self._broadcast_ref(job.broadcast)])
        return (i, ref)

    def collect(self, handle) -> JobResult:
        i, ref = handle
        try:
            return self.ray.get(ref)
        finally:
            self.outstanding[i] -= 1

    def cancel(self, handle) -> None:
        i, ref = handle
        self.outstanding[i] -= 1
        self.ray.cancel(ref)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        self._broadcast_refs.clear()
        if self._started_ray:
            self.ray.shutdown()
