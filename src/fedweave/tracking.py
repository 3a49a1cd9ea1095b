"""Optional experiment trackers: TensorBoard and MLflow.

A run always writes its own run directory (``config.yaml``, ``metrics.jsonl``,
``summary.json``); trackers mirror the same figures into tools people already use.
They are switched on in the ``output`` section::

    output:
      tensorboard: true            # event files in <run dir>/tensorboard
      mlflow: true                 # one MLflow run per fedweave run
      mlflow_tracking_uri: null    # default: sqlite:///<run dir>/mlflow.db
      mlflow_experiment: fedweave

Both need the ``tracking`` extra (``pip install "fedweave[tracking]"``); a config that
asks for a tracker whose package is missing is rejected by :func:`check_trackers`
before the run directory is created.

MLflow's default store is a SQLite database in the run directory: MLflow 3 refuses
its old file store (``./mlruns``, ``file:`` URIs) unless ``MLFLOW_ALLOW_FILE_STORE``
is set, while ``sqlite:///`` works offline with no server. Point
``output.mlflow_tracking_uri`` at a shared database or a tracking server
(``http://host:5000``) to see many runs in one place; a tracking server is the safe
choice for parallel sweeps, since SQLite serialises concurrent writers. MLflow's usage
telemetry is switched off for these runs unless ``MLFLOW_DISABLE_TELEMETRY`` is set.

A tracker that fails while the run is in progress (a server that went away, a full
disk) issues one warning and stops logging; it never stops the run itself.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from .core.errors import ConfigError

EXTRA_HINT = 'pip install "fedweave[tracking]"'


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": 1, "c": [1, 2]}`` (lists kept whole).

    An empty mapping stays a value (``{}``), so every configured key appears once.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scalars(record: dict[str, Any], skip: Iterable[str] = ()) -> dict[str, float]:
    """The finite numeric entries of ``record`` (``None``, text and lists are left out)."""
    skip = set(skip)
    return {k: float(v) for k, v in record.items() if k not in skip and _is_number(v)}


class Tracker:
    """Receives a run's parameters, each evaluation record and the final summary."""

    name = "tracker"

    def log_params(self, params: dict[str, Any]) -> None:
        """Record the flattened config (dotted keys)."""

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        """Record one evaluation record at ``step`` (the round)."""

    def close(self, summary: dict[str, Any] | None) -> None:
        """Record the summary and release files or connections."""


class TensorBoardTracker(Tracker):
    """Scalars per round, a histogram of per-client scores, the config and summary as text."""

    name = "tensorboard"

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_params(self, params: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, global_step=0)

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        for key, value in _scalars(record, skip=("round",)).items():
            self.writer.add_scalar(key, value, global_step=step)
        scores = record.get("client_scores")
        if isinstance(scores, list) and scores:
            import numpy as np

            self.writer.add_histogram("client_scores", np.asarray(scores, dtype=np.float64), global_step=step)
        self.writer.flush()

    def close(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            step = int(summary.get("rounds_completed") or 0)
            text = "```\n" + json.dumps(summary, indent=2, default=str) + "\n```"
            self.writer.add_text("summary", text, global_step=step)
            if summary.get("metric_name") and isinstance(summary.get("final_metric"), (int, float)):
                self.writer.add_scalar(f"headline/{summary['metric_name']}", summary["final_metric"], global_step=step)
        self.writer.close()


_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")
_MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}


class MLflowTracker(Tracker):
    """One MLflow run per fedweave run: params, metrics per round (step = round), summary.

    Summary figures are logged as metrics named ``summary/<key>`` and the run's status
    as the tag ``fedweave.status``; the MLflow run ends FINISHED, KILLED (interrupted)
    or FAILED (diverged).
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_dir: Path, default_store: bool):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        for noisy in ("mlflow.store.db.utils", "alembic"):  # schema creation chatter on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # with the per-run store, keep any artifacts inside the run directory too
            location = (run_dir / "mlartifacts").resolve().as_uri() if default_store else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        tags = {"fedweave.run_dir": str(run_dir.resolve())}
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    @staticmethod
    def _key(key: str) -> str:
        return _MLFLOW_KEY.sub("_", key)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        def text(value: Any) -> str:  # MLflow params are strings of at most 6000 characters
            return (value if isinstance(value, str) else json.dumps(value))[:6000]

        items = [Param(self._key(k), text(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self._key(k), v, now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_metrics(self, record: dict[str, Any], step: int) -> None:
        self._log_scalars(_scalars(record, skip=("round",)), step)

    def close(self, summary: dict[str, Any] | None) -> None:
        status = "FAILED"
        if summary is not None:
            step = int(summary.get("rounds_completed") or 0)
            self._log_scalars({f"summary/{k}": v for k, v in _scalars(summary).items()}, step)
            self.client.set_tag(self.run_id, "fedweave.status", str(summary.get("status")))
            if summary.get("metric_name"):  # the figure the run is judged by (personalized accuracy...)
                self.client.set_tag(self.run_id, "fedweave.headline", str(summary["metric_name"]))
            status = _MLFLOW_STATUS.get(summary.get("status"), "FAILED")
        self.client.set_terminated(self.run_id, status=status)


# -- construction -------------------------------------------------------------------------


def check_trackers(output_cfg) -> None:
    """Raise :class:`ConfigError` if a requested tracker's package is not installed.

    Only looks the packages up (no import), so it is cheap enough to run while a
    config is validated.
    """
    needed = []
    if output_cfg.tensorboard:
        needed.append(("output.tensorboard", "tensorboard"))
    if output_cfg.mlflow:
        needed.append(("output.mlflow", "mlflow"))
    for key, package in needed:
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{key}=true needs the {package!r} package, which is not installed; install the tracking extra: "
                f"{EXTRA_HINT} (or set {key}=false)."
            )


def make_trackers(cfg, run_dir_path: str | Path) -> list[Tracker]:
    """The trackers that ``cfg.output`` asks for, each already holding the flattened config."""
    out = cfg.output
    if not (out.tensorboard or out.mlflow):
        return []
    check_trackers(out)
    run_dir = Path(run_dir_path)
    trackers: list[Tracker] = []
    if out.tensorboard:
        trackers.append(TensorBoardTracker(run_dir / "tensorboard"))
    if out.mlflow:
        default_store = out.mlflow_tracking_uri is None
        uri = out.mlflow_tracking_uri or "sqlite:///" + str((run_dir / "mlflow.db").resolve())
        try:
            trackers.append(MLflowTracker(uri, out.mlflow_experiment, run_dir.name, run_dir, default_store))
        except Exception as exc:  # a wrong URI, an unreachable server, a broken database
            for tracker in trackers:
                tracker.close(None)
            raise ConfigError(
                f"output.mlflow: could not start an MLflow run in {uri!r} (output.mlflow_tracking_uri): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    params = flatten(cfg.to_dict())
    for tracker in trackers:
        tracker.log_params(params)
    return trackers


def _guarded(trackers: list[Tracker], action: Callable[[Tracker], None], what: str) -> None:
    """Apply ``action`` to each live tracker; a failing tracker warns once and is dropped."""
    for tracker in list(trackers):
        try:
            action(tracker)
        except Exception as exc:  # a tracker must never break the run it observes
            warnings.warn(f"{tracker.name} tracking stopped ({what} failed: {type(exc).__name__}: {exc})", stacklevel=2)
            trackers.remove(tracker)


def track_progress(progress: Callable | None, trackers: list[Tracker]) -> Callable | None:
    """Wrap a ``progress(done, total, record)`` callback so each eval record is also tracked."""
    if not trackers:
        return progress

    def on_round(done: int, total: int, record: dict | None) -> None:
        if record is not None:
            step = int(record.get("round", done))
            _guarded(trackers, lambda t: t.log_metrics(record, step), "logging metrics")
        if progress is not None:
            progress(done, total, record)

    return on_round


def close_trackers(trackers: list[Tracker], summary: dict[str, Any] | None) -> None:
    """Hand each tracker the summary and close it."""
    _guarded(trackers, lambda t: t.close(summary), "closing")


__all__ = ["Tracker", "TensorBoardTracker", "MLflowTracker", "check_trackers", "make_trackers",
           "track_progress", "close_trackers", "flatten"]
