"""Builds everything from a config and runs it: ``fedweave.run(config) -> RunResult``.

Everything that can be wrong with a config is found here, before the run directory is
created: unknown names, invalid values, impossible stage combinations, missing or
corrupt data files, a model that does not fit the data. So a bad run never leaves a
half-written directory that looks like a finished run.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from .config import Config, ConfigWarning, inapplicable_keys, load_config, read_yaml
from .core.allocator import retain_freed_memory
from .core.client import ClientAlgorithm
from .core.device import check_precision, resolve_device, set_deterministic
from .core.errors import ConfigError, DataError, DivergedError, FedweaveError, ModelError
from .core.params import FlatModel, ParamSpec, check_role_patterns
from .core.rng import derive_seed, seeded_build
from .core.strategy import Strategy
from .core.task import Task
from .data.federated import FederatedDataset, build_federated
from .methods import build_method
from .methods.registry import method_roles
from .metrics import degenerate_reason, summarize
from .models import build_model
from .rundir import CHECKPOINT, CONFIG, LOCK, RunDirectory, check_output_path
from .sim.devices import DeviceFleet, make_fleet
from .sim.executors import Executor, check_executor, check_executor_fits, executor_device, make_executor
from .sim.worker import WorkerSetup
from .tasks import make_task
from .tracking import check_trackers, close_trackers, make_trackers, track_progress
from .train import TrainSettings


@dataclass
class ModelFactory:
    """Builds the configured model with a seeded initialisation (picklable)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    kwargs: dict[str, Any]
    seed: int

    def __call__(self) -> torch.nn.Module:
        with seeded_build(derive_seed(self.seed, "init")):
            return build_model(self.name, self.input_shape, self.num_classes, **self.kwargs)


@dataclass
class Experiment:
    config: Config
    task: Task
    data: FederatedDataset
    model_factory: ModelFactory
    roles: dict[str, str]
    spec: ParamSpec
    initial_params: torch.Tensor
    initial_buffers: torch.Tensor
    strategy: Strategy
    algorithm: ClientAlgorithm
    fleet: DeviceFleet
    executor: Executor | None = None
    deterministic_before: bool | None = None  # the process's setting, restored when the run ends
    # Extension points (attacks, privacy, eavesdroppers...), filled by `extensions()`:
    # cohort hooks map the accepted updates of a round before aggregation,
    # (updates, state, round, ctx) -> updates; observers see uplinks, rounds and evaluations
    # (see fedweave.sim.engine.Observer).
    cohort_hooks: list = field(default_factory=list)
    observers: list = field(default_factory=list)

    def use_model(self, factory: Callable[[], torch.nn.Module], flat: FlatModel, roles: dict[str, str] | None = None) -> None:
        """Switch to another model (FRL's supermask net, pLoRA's adapters): ``flat`` is a
        FlatModel built from ``factory()``; its layout and values become the initial global model."""
        self.model_factory = factory
        if roles is not None:
            self.roles = roles
        self.spec = flat.spec
        self.initial_params = flat.params.clone()
        self.initial_buffers = flat.buffers.clone()

    def train_settings(self, lr: float) -> TrainSettings:
        c = self.config.client
        return TrainSettings(
            epochs=None if c.local_steps else c.epochs, local_steps=c.local_steps, batch_size=c.batch_size, lr=lr,
            optimizer=c.optimizer, momentum=c.momentum, weight_decay=c.weight_decay, grad_clip=c.grad_clip,
            augment=self.config.data.augment,
            precision=c.precision,
            channels_last=self.config.executor.channels_last,
        )

    def worker_setup(self) -> WorkerSetup:
        ex = self.config.executor
        return WorkerSetup(self.model_factory, self.roles, self.task.name, self.data, self.algorithm,
                           self.config.seed, ex.threads, ex.device, ex.data_memory_mb, self.config.client.precision,
                           ex.deterministic, ex.retain_memory)


def build_experiment(config: Config, data: FederatedDataset | None = None) -> Experiment:
    """Validate ``config`` against the data and the registries; build every piece."""
    from .plugins import import_plugins

    import_plugins(config.plugins)  # users' methods, models... register themselves before any name is looked up
    for problem in inapplicable_keys(config):
        warnings.warn(problem, ConfigWarning, stacklevel=2)
    task = make_task(config.task.kind)
    check_trackers(config.output)
    strategy, algorithm = build_method(config)  # config-only checks come before loading data
    check_executor(config.executor)  # Ray installed and reachable, before loading data
    check_precision(config.client.precision, resolve_device(config.executor.device))
    data = data if data is not None else build_federated(config.data)
    sched = config.schedule
    if sched.sampling != "poisson" and sched.clients_per_round > data.num_clients:
        raise ConfigError(
            f"schedule.clients_per_round={sched.clients_per_round} exceeds the {data.num_clients} clients of the "
            "partition; lower it or raise data.partition.num_clients."
        )
    m = config.model
    kwargs: dict[str, Any] = dict(m.kwargs)
    if m.hidden is not None:
        kwargs["hidden"] = list(m.hidden)
    if m.name.startswith("hf:"):
        kwargs["task"] = task.name  # the head: causal LM for language_model, a classifier otherwise
    if ":" not in m.name:
        kwargs.setdefault("norm", m.norm)
        if m.width is not None:  # unset: the model's default (models/__init__.py build_model)
            kwargs.setdefault("width", m.width)
    factory = ModelFactory(m.name, tuple(data.input_shape), data.num_classes, kwargs, config.seed)
    module = factory()
    if hasattr(module, "check_inputs"):  # e.g. a Hugging Face model reading token ids
        module.check_inputs(data.x, m.name)
    check_role_patterns(module, m.roles)
    roles = method_roles(config, module)  # model.roles plus what the method declares (FedPer's head...)
    flat = FlatModel(module, roles)
    module.eval()  # the probe must not touch BatchNorm statistics
    with torch.no_grad():
        try:
            out = module(data.x[:2])
        except Exception as exc:  # a model that does not fit the data is a user error
            raise ModelError(f"Model {m.name!r} cannot process inputs of shape {tuple(data.input_shape)}: {exc}") from None
    module.train()
    if config.data.augment != "none" and (len(data.input_shape) != 3 or not torch.is_floating_point(data.x)):
        raise ConfigError(f"data.augment={config.data.augment} crops and flips images, but data.dataset "
                          f"{config.data.dataset!r} has inputs of shape {tuple(data.input_shape)} ({data.x.dtype}); "
                          "it needs float images [channels, height, width]. Use data.augment: none.")
    if task.name == "classification" and torch.is_floating_point(data.y):
        raise DataError(f"task.kind classification needs integer class labels, but data.dataset {config.data.dataset!r} "
                        "has real-valued targets; use its task (regression for burgers1d, restoration for sr<k>:...).")
    if task.name == "classification" and tuple(out.shape) != (min(2, len(data.x)), data.num_classes):
        raise ModelError(f"Model {m.name!r} outputs shape {tuple(out.shape)}; expected [batch, {data.num_classes}] classes.")
    if hasattr(task, "check_output"):  # e.g. restoration: output and target images must match
        task.check_output(out, data.y[: len(out)])
    if flat.spec.num_params == 0:
        raise ModelError(f"Model {m.name!r} has no trainable shared parameters under model.roles "
                         f"and the roles of method {config.method.name!r}: {roles}.")
    check_executor_fits(config.executor, WorkerSetup(factory, roles, task.name, data, algorithm, config.seed,
                                                     precision=config.client.precision),
                        flat, config.client.optimizer)
    exp = Experiment(
        config=config, task=task, data=data, model_factory=factory, roles=roles, spec=flat.spec,
        initial_params=flat.params.clone(), initial_buffers=flat.buffers.clone(), strategy=strategy,
        algorithm=algorithm, fleet=make_fleet(config.system, data.num_clients, config.data.seed, flat.spec.num_params),
    )
    for configure in extensions():
        configure(exp)
    return exp


def extensions() -> tuple[Callable[[Experiment], None], ...]:
    """Set-up steps run on the built experiment, in order: the model's and the method's
    own set-up hooks (from their registrations), then the features that configure
    themselves from their config sections (each may wrap the client algorithm, add cohort
    hooks or observers, or refuse a combination)."""
    from .methods.registry import setup_method
    from .models import setup_model
    from .privacy import configure_privacy
    from .threats import configure_attack, configure_eavesdropper, configure_rejection, configure_robust_accuracy

    # order matters: model and method set-up first (they may swap the model), then
    # privacy (wraps strategy and client), then the attack (wraps the client outermost:
    # attackers skip DP's client-side clipping)
    return (setup_model, setup_method, configure_privacy, configure_attack, configure_eavesdropper,
            configure_robust_accuracy, configure_rejection)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    params: torch.Tensor | None = None
    buffers: torch.Tensor | None = None

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")


def default_run_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}-{stamp}"


def run(
    config: Config | dict | str | Path | None = None,
    *,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: Callable[[int, int, dict | None], None] | None = None,
    overwrite: bool = False,
    plugins: list[str] | None = None,
    on_start: Callable[[Path], None] | None = None,
) -> RunResult:
    """Run an experiment end to end and write its run directory.

    ``overwrite=True`` replaces a run already in the output directory (a directory holding
    anything but a run is never deleted); without it such a directory is refused.
    ``plugins`` are modules of yours to import first (added to the config's ``plugins``,
    so ``--resume`` imports them too). ``on_start(path)`` is called once the run directory exists.
    """
    cfg = load_config(config, overrides)
    if out is not None:
        cfg.output.dir = str(out)
    if plugins:
        cfg.plugins = list(dict.fromkeys([*cfg.plugins, *plugins]))
    run_dir = RunDirectory(check_output_path(cfg.output.dir or default_run_dir(cfg), "The run directory (--out)"))
    exp = build_experiment(cfg)
    if not overwrite:
        refuse_existing_run(run_dir)
    cfg.output.dir = str(run_dir.path)
    start_executor(exp)  # before the directory exists: an unreachable cluster leaves nothing behind
    made = not run_dir.path.exists()
    try:
        take_run_dir(run_dir, overwrite)  # only now that everything is valid and started
        run_dir.create(cfg.to_yaml())
    except BaseException:
        exp.executor.close()
        if made and run_dir.locked:  # leave no directory behind
            run_dir.unlock()
            shutil.rmtree(run_dir.path, ignore_errors=True)
        raise
    if on_start is not None:
        on_start(run_dir.path)
    try:
        return _execute(exp, run_dir, None, progress, executor_started=True)
    finally:
        run_dir.unlock()


def take_run_dir(run_dir: RunDirectory, overwrite: bool) -> None:
    """Lock ``run_dir`` for this process, then delete the run in it (``overwrite``) or
    refuse one there — checked again under the lock, where no other process can start one."""
    run_dir.lock()
    if overwrite:
        clear_run(run_dir)
    else:
        refuse_existing_run(run_dir)


def clear_run(run_dir: RunDirectory) -> None:
    """Delete the run in ``run_dir`` (``--overwrite``), keeping the lock file this process holds;
    a directory that holds no run is left as it is."""
    if not (run_dir.path / CONFIG).exists():
        return
    for child in run_dir.path.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def refuse_existing_run(run_dir: RunDirectory) -> None:
    """Refuse a directory that already holds a run (its config file), saying how to go on."""
    if (run_dir.path / CONFIG).exists():
        raise ConfigError(
            f"{str(run_dir.path)!r} already holds a run; choose another output directory, replace it with "
            "--overwrite (overwrite=True), or continue it with `fedweave run --resume DIR`."
        )


def open_for_resume(run_path: str | Path) -> tuple[RunDirectory, Config]:
    """The run directory of a stopped run, locked for this process, and its config;
    refuses what cannot be resumed (and a directory another live process works in)."""
    run_dir = RunDirectory(run_path)
    if not (run_dir.path / CONFIG).is_file():
        raise ConfigError(f"{str(run_dir.path)!r} is not a run directory (no {CONFIG}).")
    run_dir.lock()
    try:
        summary = run_dir.read_summary()
        if summary is not None and summary.get("status") == "completed":
            raise ConfigError(f"The run in {str(run_dir.path)!r} is already completed; nothing to resume.")
        return run_dir, load_config(read_yaml(run_dir.path / CONFIG))
    except BaseException:
        run_dir.unlock()
        raise


def resume(run_path: str | Path, progress: Callable[[int, int, dict | None], None] | None = None) -> RunResult:
    """Continue a stopped run from its last checkpoint; ends as an uninterrupted run would."""
    run_dir, cfg = open_for_resume(run_path)
    try:
        exp = build_experiment(cfg)
        ckpt = run_dir.load_checkpoint()
        if ckpt is None:
            # stopped before its first checkpoint: start again from scratch
            run_dir.create(cfg.to_yaml())
        run_dir.clear_summary()
        return _execute(exp, run_dir, ckpt, progress)
    finally:
        run_dir.unlock()


def start_executor(exp: Experiment) -> None:
    """Start the configured executor in ``exp.executor`` (vectorized/auto fall back or refuse)."""
    cfg = exp.config
    torch.set_num_threads(cfg.executor.threads)
    if cfg.executor.retain_memory:
        retain_freed_memory()
    if cfg.executor.deterministic:
        exp.deterministic_before = set_deterministic(True)
    exp.executor = make_executor(cfg.executor, exp.worker_setup(), cfg.client.optimizer)


def _execute(exp: Experiment, run_dir: RunDirectory, ckpt: dict | None, progress,
             executor_started: bool = False) -> RunResult:
    from .sim.engine import Simulator

    cfg = exp.config
    if not executor_started:
        start_executor(exp)
    sim = Simulator(exp, run_dir, progress)
    trackers = make_trackers(cfg, run_dir.path)
    sim.progress = track_progress(progress, trackers)
    if ckpt is not None:
        sim.restore(ckpt)
        # exactly the records the checkpoint covers, also one whose append failed (a full disk)
        run_dir.rewrite_metrics(sim.committed.history)
    status, message = "completed", None
    try:
        sim.run()
    except DivergedError as exc:
        status, message = "diverged", str(exc)
    except KeyboardInterrupt:
        run_dir.save_checkpoint(sim.checkpoint_dict())
        summary = _write_summary(exp, run_dir, sim, "interrupted", f"stopped by the user; continue with `fedweave run --resume {run_dir.path}`")
        close_trackers(trackers, summary)
        raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # no space, or no quota left
            raise
        raise _stopped_on_full_disk(exp, run_dir, sim, trackers, exc) from None
    finally:
        exp.executor.close()
        if exp.deterministic_before is not None:
            set_deterministic(exp.deterministic_before)
    summary = _write_summary(exp, run_dir, sim, status, message)
    close_trackers(trackers, summary)
    if status == "completed":
        # a completed run cannot be resumed: its checkpoint and spilled client states go
        (run_dir.path / CHECKPOINT).unlink(missing_ok=True)
        shutil.rmtree(run_dir.path / "client_state", ignore_errors=True)
    c = sim.committed
    return RunResult(run_dir.path, summary, c.history, c.state.params, c.state.buffers)


class DiskFullError(FedweaveError):
    """A write to the run directory failed for lack of space; the run is resumable."""


def _stopped_on_full_disk(exp: Experiment, run_dir: RunDirectory, sim, trackers, exc: OSError) -> DiskFullError:
    """Save what can be saved after a write failed with ENOSPC and say how to go on.

    The committed snapshot is complete (records are committed before they are appended),
    so a checkpoint of it resumes the run without loss; ``--resume`` rewrites
    ``metrics.jsonl`` from it."""
    where = f"{exc.filename}: " if exc.filename else ""
    try:
        run_dir.save_checkpoint(sim.checkpoint_dict())
        saved = f"a checkpoint of round {sim.committed.round} is saved"
    except OSError:
        saved = ("no new checkpoint could be written" + (", the last one is kept" if (run_dir.path / CHECKPOINT).exists()
                                                            else ""))
    try:
        summary = _write_summary(exp, run_dir, sim, "interrupted", f"stopped: the disk is full ({where}{exc.strerror})")
        close_trackers(trackers, summary)
    except OSError:
        pass
    return DiskFullError(
        f"The disk holding {str(run_dir.path)!r} is full ({where}{exc.strerror}); the run stopped after round "
        f"{sim.committed.round} and {saved}. Free some space, then continue with `fedweave run --resume "
        f"{run_dir.path}` (metrics.jsonl is completed from the checkpoint)."
    )


def headline_metric(cfg: Config, task: Task) -> tuple[str, bool]:
    """The figure a run is judged by, and whether higher is better.

    The task's own metric (accuracy, perplexity, PSNR...) of the global model, except
    with ``eval.personalized``: then the mean personalized accuracy over the clients, the
    figure personalization methods are compared on. ``summary.json``'s ``metric_name`` and
    ``final_metric``, the progress display, ``results.csv``, ``table.md``, the report and
    the trackers all show this one.
    """
    if cfg.eval.personalized:
        return "personalized_acc_mean", task.higher_is_better
    return task.metric_name, task.higher_is_better


def _write_summary(exp: Experiment, run_dir: RunDirectory, sim, status: str, message: str | None) -> dict[str, Any]:
    cfg, task, c = exp.config, exp.task, sim.committed
    summary: dict[str, Any] = {
        "name": cfg.name,
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "status": status,
        "rounds_completed": c.round,
        "rounds": cfg.schedule.rounds,
        "seed": cfg.seed,
    }
    name, higher = headline_metric(cfg, task)
    summary.update(summarize(c.history, metric_name=name, higher_is_better=higher,
                             final_window=cfg.eval.final_window, target=cfg.eval.target))
    summary["higher_is_better"] = higher
    if name != task.metric_name:  # the global model's figure stays beside the headline one
        own = summarize(c.history, metric_name=task.metric_name, higher_is_better=task.higher_is_better,
                        final_window=cfg.eval.final_window, target=None)
        summary[f"final_global_{task.metric_name}"] = own["final_metric"]
        summary[f"best_global_{task.metric_name}"] = own["best_metric"]
    if task.name == "classification":
        summary["final_accuracy"] = summary.get("final_global_accuracy", summary["final_metric"])
        summary["best_accuracy"] = summary.get("best_global_accuracy", summary["best_metric"])
    summary.update({
        "virtual_time_s": c.clock,
        "wall_time_s": c.wall_time_s,
        "bytes_up": c.totals.bytes_up,
        "bytes_down": c.totals.bytes_down,
        "client_updates": c.totals.client_updates,
        "dropped_updates": c.totals.dropped_updates,
        "num_params": exp.spec.num_params,
        "late_updates": c.totals.late_updates,
        # accepted updates per client, indexed by client id
        "participation": [int(v) for v in c.participation] if c.participation is not None else None,
        "executor": exp.executor.describe() if exp.executor is not None else None,
        "device": executor_device(cfg.executor),
    })
    for obs in exp.observers:
        summary.update(obs.summary())
    if task.name == "classification" and status == "completed":
        reason = degenerate_reason(c.history, num_classes=exp.data.num_classes, test_labels=exp.data.y_test.numpy())
        if reason:
            summary["warning"] = reason
    if message:
        summary["message"] = message
    run_dir.write_summary(summary)
    return summary


__all__ = ["Experiment", "RunResult", "build_experiment", "run", "resume", "FedweaveError"]
