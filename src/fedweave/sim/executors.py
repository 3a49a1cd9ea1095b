"""Every executor kind, and the one place that picks and builds one: :func:`make_executor`.

==============  ===========================================================================
``serial``      in-process, one reused model: the reference (:mod:`.executor_base`)
``vectorized``  a cohort of same-shape clients trained at once (:mod:`.vectorized`)
``auto``        vectorized where that applies and pays, serial otherwise (it says why)
``ray``         long-lived Ray actors on this machine or a cluster (:mod:`.ray_executor`)
==============  ===========================================================================

Whatever the kind, the numbers are those of ``serial`` (within float tolerance for
``vectorized``; bit for bit for ``ray`` at the same ``executor.threads``). A new kind is
an :class:`~fedweave.sim.executor_base.Executor` subclass in its own module, a line in
:data:`EXECUTORS` and a branch here (and its name in ``ExecutorConfig.kind``).
"""

from __future__ import annotations

from ..config import ExecutorConfig
from ..core.device import describe_device
from ..core.errors import ConfigError, unknown_name
from ..core.params import FlatModel
from .executor_base import Executor, SerialExecutor
from .ray_executor import RayExecutor, check_address, check_gpu_share, import_ray
from .vectorized import make_vectorized, unsupported_reason
from .worker import WorkerSetup

EXECUTORS = {
    "serial": "in-process, one reused model (the reference)",
    "ray": "long-lived Ray actors on this machine or a cluster (fedweave[ray])",
    "vectorized": "a cohort of clients trained at once (batched matmuls for MLPs, torch.func vmap otherwise)",
    "auto": "vectorized where the method allows it and the model is a Linear/ReLU/Tanh stack, serial otherwise",
}


def check_executor(executor_cfg: ExecutorConfig) -> None:
    """What can be refused from ``executor.*`` alone, before any data is loaded: Ray not
    installed, an unreachable ``executor.address``, a CUDA device for actors that reserve no GPU."""
    if executor_cfg.kind == "ray":
        if executor_cfg.device.strip().lower().startswith("cuda") and not executor_cfg.gpus_per_worker:
            raise ConfigError(f"executor.device={executor_cfg.device} with executor.kind=ray needs "
                              "executor.gpus_per_worker > 0 (e.g. 1, or 0.25 to share a GPU between four actors): "
                              "Ray shows an actor only the GPUs it reserved. Use executor.device=auto or cpu otherwise.")
        check_gpu_share(executor_cfg.gpus_per_worker)
        import_ray()
        check_address(executor_cfg.address)


def check_executor_fits(executor_cfg: ExecutorConfig, setup: WorkerSetup, model: FlatModel, optimizer: str) -> None:
    """Refuse ``executor.kind: vectorized`` for an experiment it cannot run (``auto``
    falls back to serial instead), before the run directory exists."""
    if executor_cfg.kind != "vectorized":
        return
    reason = unsupported_reason(setup, model, optimizer)
    if reason:
        raise ConfigError(f"executor.kind=vectorized cannot run this experiment: {reason}. "
                          "Use executor.kind=serial, or auto to vectorize where possible.")


def make_executor(executor: ExecutorConfig | str, setup: WorkerSetup | None = None, optimizer: str = "sgd") -> Executor:
    """The executor of ``executor.kind`` (an ``executor`` config section, or a kind name
    for its defaults), started with ``setup`` when one is given.

    ``vectorized`` and ``auto`` look at the model before they decide what they can run,
    so they need ``setup`` and ``optimizer`` (``client.optimizer``) and come back started;
    ``auto`` may come back as a :class:`SerialExecutor` whose ``fallback_reason`` says why.
    """
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise unknown_name("executor", executor, EXECUTORS)
        executor = ExecutorConfig(kind=executor)
    kind = executor.kind
    if kind in ("vectorized", "auto"):
        if setup is None:
            raise ValueError(f"executor.kind={kind} decides from the model what it can run: pass the worker setup")
        memory = None if executor.cohort_memory_mb is None else int(executor.cohort_memory_mb * 2**20)
        return make_vectorized(setup, optimizer, executor.max_cohort, auto=kind == "auto",
                               kernel=executor.vectorized_kernel, memory_bytes=memory)
    if kind == "serial":
        ex: Executor = SerialExecutor()
    elif kind == "ray":
        ex = RayExecutor(executor.address, executor.num_workers, executor.threads, executor.gpus_per_worker)
    else:
        raise unknown_name("executor", kind, EXECUTORS)
    if setup is not None:
        ex.start(setup)
    return ex


def executor_device(executor_cfg: ExecutorConfig) -> str:
    """Where the clients of ``executor.*`` train, for the summary: Ray actors that reserve
    no GPU see none, so ``auto`` means their CPUs."""
    if executor_cfg.kind == "ray" and not executor_cfg.gpus_per_worker:
        return "cpu (ray actors reserve no GPU)"
    return describe_device(executor_cfg.device)


__all__ = ["executor_device", "EXECUTORS", "Executor", "SerialExecutor", "check_executor", "check_executor_fits", "make_executor"]
