"""Sweeps: every combination of grid values × seeds, each a separate run, in parallel.

::

    fedweave sweep base.yaml --grid method.name=fedavg,fedprox \\
        --grid data.partition.alpha=0.1,1.0 --seeds 0,1,2 --jobs 4 --out sweeps/cmp

runs 2 × 2 × 3 = 12 runs into ``sweeps/cmp/<combination>/seed<k>/``, where the
combination's directory name spells out its values, e.g.
``method.name=fedavg__data.partition.alpha=0.1``.

Grid values
    ``--grid KEY=V1,V2,...``: each value is parsed as YAML, like ``--set`` (``0.1`` is a
    float, ``fedavg`` a string, ``[16,16]`` a list). Commas inside brackets or quotes do
    not separate values, so ``--grid 'model.hidden=[16],[32,32]'`` has two values. A value
    list that contains ``;`` is split on ``;`` only: ``--grid 'model.kwargs={a: 1, b: 2};{a: 3}'``.

Validation first
    Every combination is validated before any run starts: the config is loaded with the
    combination's overrides (unknown keys and invalid values are named, with what is
    allowed) and built against its data (e.g. ``schedule.clients_per_round`` against the
    number of clients); the data is built once per distinct ``data`` section.

Stopping and starting again
    A run is finished when its ``summary.json`` says ``completed`` or ``diverged`` (both
    are results: running them again gives the same numbers). Starting the same sweep
    again skips finished runs and runs every other one from scratch, deleting whatever a
    stopped or failed attempt left in its directory. A finished run whose config differs
    from the one the sweep would run now (outside the ``output`` section) is an error, so
    one directory never mixes results of two different sweeps.

Failures
    A run that raises is recorded (``<run dir>/error.txt`` with the traceback, status
    ``failed`` in ``results.csv``) and the other runs go on.

Outputs in the sweep directory
    ``sweep.json`` (grid, seeds, base config and overrides, the list of runs),
    ``results.csv`` (one row per run: grid values, seed, status and every scalar of
    ``summary.json``) and ``table.md`` (one row per combination, mean ± std over seeds;
    see :mod:`fedweave.report`).

Workers are separate processes started with ``spawn`` (never ``fork``, which is unsafe
once torch has started threads); each uses ``executor.threads`` torch threads.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .config import deep_merge, load_config, parse_overrides, read_yaml, set_dotted
from .core.errors import ConfigError, FedweaveError
from .rundir import CONFIG, SUMMARY, atomic_write_text

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.csv"
TABLE_FILE = "table.md"
ERROR_FILE = "error.txt"
FINISHED = ("completed", "diverged")
SWEEP_FORMAT = 1
_MAX_NAME = 150  # combination directory names longer than this are shortened with a hash


# -- the grid ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid`` option: a dotted key and its values (as typed and as parsed)."""

    key: str
    texts: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(value_slug(t) for t in self.texts)


@dataclass(frozen=True)
class Combination:
    """One point of the grid: ``((key, text, value), ...)`` in grid order."""

    items: tuple[tuple[str, str, Any], ...]

    @property
    def name(self) -> str:
        """Readable, filesystem-safe directory name, e.g. ``method.name=fedavg__client.lr=0.1``."""
        if not self.items:
            return "base"
        name = "__".join(f"{key}={value_slug(text)}" for key, text, _ in self.items)
        if len(name) > _MAX_NAME:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[:_MAX_NAME - 9]}~{digest}"
        return name

    @property
    def params(self) -> dict[str, str]:
        """``{key: value as typed}``, the combination's label."""
        return {key: text for key, text, _ in self.items}

    def overrides(self) -> dict[str, Any]:
        """The combination as a nested override dict for :func:`fedweave.config.load_config`."""
        tree: dict[str, Any] = {}
        for key, _, value in self.items:
            set_dotted(tree, key, value)
        return tree


def split_values(text: str) -> list[str]:
    """Split a ``--grid`` value list: on ``;`` if it has one, else on commas outside brackets/quotes."""
    if ";" in text:
        return [part.strip() for part in text.split(";")]
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def value_slug(text: str) -> str:
    """Filesystem-safe text for a value: ``[32, 32]`` → ``32-32``, ``a/b`` → ``a_b``."""
    s = re.sub(r"[\[\]{}()'\"\s]", "", text).replace(",", "-")
    s = re.sub(r"[^A-Za-z0-9._+=:-]", "_", s).replace(":", "_")
    return s or "_"


def grid_options(grid: dict[str, Iterable[Any]]) -> list[str]:
    """``{"method.name": ["fedavg", "fedprox"], "client.lr": [0.1, 0.01]}`` as ``--grid`` options."""
    items = []
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"grid[{key!r}] must be a list of values, e.g. {{{key!r}: [v1, v2]}}; got {values!r}.")
        texts = [v if isinstance(v, str) else json.dumps(v) for v in values]
        if not texts:
            raise ConfigError(f"grid[{key!r}] is empty; give at least one value.")
        items.append(f"{key}={';'.join(texts)}" if len(texts) > 1 else f"{key}={texts[0]}")
    return items


def parse_grid(items: Iterable[str] | dict[str, Iterable[Any]] | None) -> list[GridAxis]:
    """Parse ``--grid KEY=V1,V2,...`` options (or a ``{key: [values]}`` dict); raises
    :class:`ConfigError` on malformed ones."""
    if isinstance(items, dict):
        items = grid_options(items)
    axes: list[GridAxis] = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"--grid {item!r} must look like KEY=V1,V2,... (e.g. method.name=fedavg,fedprox).")
        if key == "seed" or key.startswith("output.") or key == "output":
            what = "--seeds" if key == "seed" else "--out (the sweep places each run)"
            raise ConfigError(f"--grid cannot vary {key!r}; use {what}.")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key!r} is given twice; list all its values in one option.")
        texts = split_values(raw)
        if any(not t for t in texts):
            raise ConfigError(f"--grid {item!r} has an empty value; separate values with commas (or ';').")
        if len(set(texts)) != len(texts):
            raise ConfigError(f"--grid {item!r} repeats a value.")
        values = []
        for t in texts:
            try:
                values.append(yaml.safe_load(t))
            except yaml.YAMLError as exc:
                raise ConfigError(f"--grid {key}: value {t!r} is not valid YAML ({exc}).") from None
        axis = GridAxis(key, tuple(texts), tuple(values))
        if len(set(axis.slugs)) != len(texts):
            raise ConfigError(f"--grid {key}: values {', '.join(texts)} give clashing directory names; make them distinct.")
        axes.append(axis)
    return axes


def parse_seeds(text: str | Iterable[int] | None, default: int = 0) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; ``None`` → ``[default]``."""
    if text is None:
        return [default]
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    seeds = []
    for p in parts:
        try:
            seeds.append(int(p))
        except (TypeError, ValueError):
            raise ConfigError(f"--seeds must be a comma-separated list of integers (e.g. 0,1,2); got {text!r}.") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds repeats a seed: {text!r}.")
    return seeds


def expand(axes: list[GridAxis]) -> list[Combination]:
    """The cross product of the axes, the first axis varying slowest."""
    columns = [[(a.key, t, v) for t, v in zip(a.texts, a.values)] for a in axes]
    return [Combination(tuple(point)) for point in itertools.product(*columns)]


# -- planning and validation ------------------------------------------------------------------


@dataclass
class SweepRun:
    """One run of a sweep: its combination, seed, directory and fully resolved config."""

    combination: Combination
    seed: int
    path: Path
    config: dict[str, Any]

    @property
    def rel(self) -> str:
        return f"{self.combination.name}/seed{self.seed}"


@dataclass
class SweepPlan:
    out: Path
    config_path: str | None
    base_overrides: list[str]
    axes: list[GridAxis]
    seeds: list[int]
    runs: list[SweepRun]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SWEEP_FORMAT,
            "config": self.config_path,
            "overrides": self.base_overrides,
            "grid": [{"key": a.key, "values": list(a.texts)} for a in self.axes],
            "seeds": self.seeds,
            "runs": [{"dir": r.rel, "combination": r.combination.name, "seed": r.seed,
                      "params": r.combination.params} for r in self.runs],
        }


def _write_text(path: Path, text: str) -> None:
    """Atomic write, readable by others like any ordinary file (the temporary file is 0600)."""
    atomic_write_text(path, text)
    os.chmod(path, 0o644)


def _conflicts(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def plan_sweep(
    config: str | Path | None,
    *,
    grid: Iterable[str] | None,
    seeds: str | Iterable[int] | None,
    out: str | Path,
    overrides: list[str] | None = None,
    plugins: Iterable[str] | None = None,
) -> SweepPlan:
    """Expand and validate a sweep; raises :class:`ConfigError` before anything is run or written.

    ``plugins`` (and the config's ``plugins``) are imported here; every run's config then
    lists every module outside fedweave that registered something in this process, so the
    worker processes import exactly what this one did. A name registered only in
    ``__main__`` (a script or notebook) cannot reach them and is refused up front.
    """
    from .data.federated import build_federated
    from .experiment import build_experiment
    from .plugins import import_plugins
    from .core.registration import user_modules

    axes = parse_grid(grid)
    if isinstance(config, dict):
        base_raw = copy.deepcopy(config)
    else:
        base_raw = read_yaml(config) if config is not None else {}
    base_overrides = list(overrides or [])
    set_tree = parse_overrides(base_overrides)
    set_keys = [o.partition("=")[0].strip() for o in base_overrides]
    for axis in axes:
        clash = next((k for k in set_keys if _conflicts(axis.key, k)), None)
        if clash:
            raise ConfigError(f"{axis.key!r} is both in --grid and in --set {clash}=...; keep it in one place.")
    base_cfg = load_config(base_raw, set_tree)
    import_plugins([*base_cfg.plugins, *(plugins or [])])
    seed_list = parse_seeds(seeds, default=base_cfg.seed)
    combos = expand(axes)
    out = Path(out)

    problems: dict[str, list[str]] = {}  # error message -> combinations
    configs: dict[str, Any] = {}  # combination name -> Config
    by_data: dict[str, list[Combination]] = {}  # combinations sharing a `data` section share one build
    for combo in combos:
        try:
            cfg = load_config(base_raw, deep_merge(set_tree, combo.overrides()))
        except FedweaveError as exc:
            problems.setdefault(str(exc), []).append(combo.name)
            continue
        import_plugins(cfg.plugins)
        unreachable = _registered_in_main(cfg)
        if unreachable:
            problems.setdefault(
                f"{unreachable} is registered in __main__ (a script or a notebook), which the sweep's worker "
                "processes cannot import. Move the registration into a module and name it with --import MODULE "
                "(or `plugins: [MODULE]` in the config).", []).append(combo.name)
            continue
        configs[combo.name] = cfg
        by_data.setdefault(json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True), []).append(combo)
    for group in by_data.values():
        try:
            data = build_federated(configs[group[0].name].data)  # one data set in memory at a time
        except FedweaveError as exc:
            problems.setdefault(str(exc), []).extend(c.name for c in group)
            continue
        for combo in group:
            try:
                build_experiment(configs[combo.name], data=data)
            except FedweaveError as exc:
                problems.setdefault(str(exc), []).append(combo.name)
        del data

    if problems:
        lines = [f"{sum(map(len, problems.values()))} of {len(combos)} sweep combinations are invalid; nothing was run."]
        for message, names in problems.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"- {shown}:\n  " + message.replace("\n", "\n  "))
        raise ConfigError("\n".join(lines))

    runs: list[SweepRun] = []
    for combo in combos:
        modules = list(dict.fromkeys([*configs[combo.name].plugins, *(plugins or []), *user_modules()]))
        for seed in seed_list:
            path = out / combo.name / f"seed{seed}"
            resolved = load_config(configs[combo.name], {"seed": seed, "output": {"dir": str(path)}, "plugins": modules})
            runs.append(SweepRun(combo, seed, path, resolved.to_dict()))
    config_path = str(Path(config).resolve()) if isinstance(config, (str, Path)) else None
    plan = SweepPlan(out, config_path, base_overrides, axes, seed_list, runs)
    _check_existing(plan)
    return plan


def _registered_in_main(cfg) -> str | None:
    """The first name this config uses that only ``__main__`` registered, as "kind 'name'"."""
    from .core.registration import origin

    used = [("method", cfg.method.name), ("weighting", cfg.method.weighting), ("combiner", cfg.method.combiner),
            ("model", cfg.model.name), ("task", cfg.task.kind), ("source", cfg.data.dataset)]
    for kind, name in used:
        if name is not None and (origin(kind, name) == "__main__" or str(name).startswith("__main__:")):
            return f"{kind} {name!r}"
    return None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    from .tracking import flatten

    a, b = flatten(old), flatten(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if not k.startswith("output.") and a.get(k) != b.get(k)]
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys]


def _check_existing(plan: SweepPlan) -> None:
    """Refuse to reuse an output directory whose finished runs were made with other configs."""
    if (plan.out / SUMMARY).exists():
        raise ConfigError(f"{str(plan.out)!r} is a run directory; give the sweep a directory of its own.")
    for run in plan.runs:
        if run_status(run.path) not in FINISHED or not (run.path / CONFIG).exists():
            continue
        diffs = _differences(read_yaml(run.path / CONFIG), run.config)
        if diffs:
            raise ConfigError(
                f"{str(run.path)!r} holds a finished run made with a different config ({'; '.join(diffs[:5])}). "
                "Use another --out, or delete that directory to run it again."
            )


def _check_shared_sqlite(plan: SweepPlan, jobs: int) -> None:
    """Parallel workers must not share one SQLite MLflow store (SQLite has a single writer)."""
    uris = {(r.config["output"].get("mlflow_tracking_uri") or "") for r in plan.runs if r.config["output"].get("mlflow")}
    shared = sorted(u for u in uris if u.startswith("sqlite:"))
    if shared and jobs > 1 and len(plan.runs) > 1:
        raise ConfigError(
            f"output.mlflow_tracking_uri={shared[0]!r} would be written by {jobs} worker processes at once, which a "
            "SQLite store does not survive. Use --jobs 1, a tracking server (http://...), or leave "
            "output.mlflow_tracking_uri unset for one database per run."
        )


def run_status(path: Path) -> str:
    """``completed``/``diverged``/``interrupted`` (from summary.json), ``failed``, ``unfinished`` or ``missing``."""
    summary = path / SUMMARY
    if summary.exists():
        try:
            return str(json.loads(summary.read_text()).get("status", "unknown"))
        except (OSError, ValueError):
            return "unfinished"
    if (path / ERROR_FILE).exists():
        return "failed"
    return "unfinished" if path.exists() else "missing"


# -- running --------------------------------------------------------------------------------

_IN_RUN = False  # worker-process state: a run is in progress
_STOPPING = False  # worker-process state: Ctrl-C was pressed; start nothing more


def _worker_init() -> None:
    """Ctrl-C interrupts a worker's run in progress, and an idle worker starts no further run."""

    def on_sigint(signum, frame):
        global _STOPPING
        _STOPPING = True
        if _IN_RUN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _run_one(config: dict[str, Any], path: str) -> dict[str, Any]:
    """Run one sweep member in a worker process; never raises for a failing run."""
    global _IN_RUN
    import torch

    from .experiment import run

    if _STOPPING:
        return {"status": "interrupted", "message": "not started: the sweep was stopped"}
    torch.set_num_threads(int(config["executor"]["threads"]))
    _IN_RUN = True
    try:
        result = run(config, out=path)
        return {"status": result.status, "message": result.summary.get("message")}
    except KeyboardInterrupt:
        return {"status": "interrupted", "message": "stopped by the user"}
    except Exception as exc:  # recorded, and the sweep goes on
        Path(path).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path) / ERROR_FILE, traceback.format_exc())
        return {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    finally:
        _IN_RUN = False


@dataclass
class SweepProgress:
    """What a progress callback receives after each run (and once before the first)."""

    total: int
    done: int
    skipped: int
    failed: int
    last: str | None = None  # "<combination>/seed<k>: <status>"


@dataclass
class SweepResult:
    out: Path
    plan: SweepPlan
    statuses: dict[str, str] = field(default_factory=dict)  # run dir (relative) → status
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [k for k, s in self.statuses.items() if s == "failed"]

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)


def run_sweep(
    config: str | Path | None = None,
    *,
    grid: Iterable[str] | None = None,
    seeds: str | Iterable[int] | None = None,
    out: str | Path,
    overrides: list[str] | None = None,
    jobs: int | None = None,
    progress: Callable[[SweepProgress], None] | None = None,
    plugins: Iterable[str] | None = None,
) -> SweepResult:
    """Validate, then run every pending run of the sweep; writes sweep.json, results.csv, table.md.

    ``KeyboardInterrupt`` stops the sweep: running runs end as ``interrupted``, the
    result files are written for what exists, and the interrupt is raised again.
    """
    if jobs is None:
        jobs = os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1; got {jobs}.")
    plan = plan_sweep(config, grid=grid, seeds=seeds, out=out, overrides=overrides, plugins=plugins)
    _check_shared_sqlite(plan, jobs)
    plan.out.mkdir(parents=True, exist_ok=True)
    _write_text(plan.out / SWEEP_FILE, json.dumps(plan.to_json(), indent=2) + "\n")

    result = SweepResult(plan.out, plan)
    pending: list[SweepRun] = []
    for run in plan.runs:
        status = run_status(run.path)
        if status in FINISHED:
            result.statuses[run.rel] = status
        else:
            if run.path.exists():
                shutil.rmtree(run.path)  # a stopped or failed attempt: start it again from scratch
            pending.append(run)
    state = SweepProgress(total=len(plan.runs), done=len(plan.runs) - len(pending), skipped=len(plan.runs) - len(pending), failed=0)
    if progress:
        progress(state)
    try:
        if pending:
            _execute(pending, min(jobs, len(pending)), result, state, progress)
    finally:
        write_outputs(plan.out)
    return result


def _execute(pending: list[SweepRun], jobs: int, result: SweepResult, state: SweepProgress, progress) -> None:
    """Run ``pending`` on ``jobs`` worker processes, handing out one run at a time.

    Only as many runs as there are workers are ever submitted, so after Ctrl-C nothing
    queued starts. A worker that dies (killed, out of memory) fails the runs it held
    and is replaced by a fresh pool.
    """

    def record(run: SweepRun, outcome: dict[str, Any]) -> None:
        result.statuses[run.rel] = outcome["status"]
        if outcome.get("message"):
            result.messages[run.rel] = outcome["message"]
        state.done += 1
        state.failed += outcome["status"] == "failed"
        state.last = f"{run.rel}: {outcome['status']}"
        if progress:
            progress(state)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)

    todo = iter(pending)
    running: dict[Future, tuple[SweepRun, ProcessPoolExecutor]] = {}
    pool = new_pool()

    def submit_next() -> None:
        run = next(todo, None)
        if run is not None:
            running[pool.submit(_run_one, run.config, str(run.path))] = (run, pool)

    try:
        for _ in range(jobs):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run, owner = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    run.path.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(run.path / ERROR_FILE, f"the worker process running this run died: {exc}\n")
                    outcome = {"status": "failed", "message": f"worker process died: {exc}"}
                    if owner is pool:  # the other runs it held fail the same way; later runs get a new pool
                        pool.shutdown(wait=False)
                        pool = new_pool()
                record(run, outcome)
                submit_next()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C: running runs save 'interrupted' summaries


# -- results ------------------------------------------------------------------------------------


def read_sweep(out: str | Path) -> dict[str, Any]:
    """The ``sweep.json`` of a sweep directory."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{str(out)!r} is not a sweep directory (no {SWEEP_FILE}).")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {exc}") from None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def results_rows(out: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``results.csv``: one row per run listed in ``sweep.json``."""
    out = Path(out)
    info = read_sweep(out)
    keys = [g["key"] for g in info.get("grid", [])]
    fixed = ["combination", *keys, "seed", "status", "run_dir", "error"]
    extra: dict[str, None] = {}
    rows = []
    for entry in info.get("runs", []):
        path = out / entry["dir"]
        row: dict[str, Any] = {"combination": entry["combination"], **entry.get("params", {}),
                               "seed": entry["seed"], "status": run_status(path), "run_dir": entry["dir"]}
        if (path / ERROR_FILE).exists():
            lines = [ln for ln in (path / ERROR_FILE).read_text().splitlines() if ln.strip()]
            row["error"] = lines[-1] if lines else "failed"
        if (path / SUMMARY).exists():
            try:
                summary = json.loads((path / SUMMARY).read_text())
            except ValueError:
                summary = {}
            for k, v in summary.items():
                if k not in fixed and _scalar(v):
                    row[k] = v
                    extra.setdefault(k)
        rows.append(row)
    return fixed + list(extra), rows


def write_outputs(out: str | Path) -> None:
    """(Re)write ``results.csv`` and ``table.md`` from the run directories of a sweep."""
    from .report import load_runs, markdown_table

    out = Path(out)
    columns, rows = results_rows(out)
    with open(out / RESULTS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    _write_text(out / TABLE_FILE, markdown_table(load_runs([out])))


def sweep(
    config: str | Path | dict[str, Any] | None = None,
    *,
    grid: Iterable[str] | dict[str, Iterable[Any]] | None = None,
    seeds: str | Iterable[int] | None = None,
    out: str | Path,
    overrides: list[str] | None = None,
    jobs: int | None = None,
    plugins: Iterable[str] | None = None,
    progress: Callable[[SweepProgress], None] | None = None,
) -> SweepResult:
    """Run every combination of ``grid`` × ``seeds``, each as its own run, in worker processes.

    >>> import fedweave
    >>> res = fedweave.sweep({"schedule": {"rounds": 5}}, grid={"method.name": ["fedavg", "fedprox"]},
    ...                      seeds=[0, 1, 2], out="runs/cmp", jobs=2)
    >>> (res.out / "table.md").read_text()

    ``config`` is a YAML path, a config dict or None (the quickstart); ``grid`` maps dotted
    keys to lists of values (or takes ``--grid`` strings). Running it again skips the
    finished runs. Methods, models... of your own must live in an importable module
    (``plugins=["mymodule"]``): worker processes cannot see what ``__main__`` registered.
    """
    return run_sweep(config, grid=grid, seeds=seeds, out=out, overrides=overrides, jobs=jobs, progress=progress,
                     plugins=plugins)


__all__ = ["sweep", "grid_options", "GridAxis", "Combination", "SweepRun", "SweepPlan", "SweepProgress", "SweepResult",
           "parse_grid", "parse_seeds", "split_values", "value_slug", "expand", "plan_sweep", "run_sweep",
           "run_status", "read_sweep", "results_rows", "write_outputs"]
