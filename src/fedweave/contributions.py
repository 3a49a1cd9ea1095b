"""Leave-one-out contributions: retrain the federation without each client in turn.

Client k's contribution is ``final(all) − final(all but k)`` of the task's primary
metric, with the same seed and data (N + 1 runs, opt-in). It is the reference that
contribution estimates made during one run (FedCE's, :mod:`fedweave.methods.fedce`) are
compared with (:func:`fedweave.methods.fedce.pearson`). It runs whole experiments, so it
lives with the orchestration, above the methods.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from .config import load_config
from .core.errors import ConfigError
from .data.federated import build_federated
from .experiment import _execute, build_experiment
from .rundir import RunDirectory


def _without(data, k: int):
    """The federated dataset with client k removed (its examples are used by nobody)."""
    keep = [i for i in range(data.num_clients) if i != k]
    return dataclasses.replace(
        data, client_train=[data.client_train[i] for i in keep], client_val=[data.client_val[i] for i in keep],
    )


def _final_metric(cfg, data, out: Path) -> float:
    exp = build_experiment(cfg, data=data)
    run_dir = RunDirectory(out)
    cfg.output.dir = str(run_dir.path)
    run_dir.create(cfg.to_yaml())
    return _execute(exp, run_dir, None, None).summary["final_metric"]


def leave_one_out(config, overrides: list[str] | None = None, data=None, out: str | Path | None = None) -> dict[str, Any]:
    """Leave-one-out contributions: retrain without each client in turn (N + 1 runs, opt-in).

    ``config`` (a Config, dict or YAML path, plus ``overrides``) is run once with all N
    clients and once without each client k, with the same seed and data; client k's
    leave-one-out contribution is ``final(all) − final(all but k)`` of the task's primary
    metric (higher is better for accuracy and PSNR). When every client takes part every
    round in ``config``, the runs without a client keep full participation
    (``clients_per_round`` = N − 1); otherwise ``clients_per_round`` is capped at N − 1.
    Returns ``{"full": value, "without": [N values], "contribution": [N values]}``.
    """
    cfg = load_config(config, overrides)
    data = data if data is not None else build_federated(cfg.data)
    n = data.num_clients
    if n < 2:
        raise ConfigError("Leave-one-out contributions need at least two clients.")
    full_participation = cfg.schedule.clients_per_round >= n
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        full = _final_metric(cfg.model_copy(deep=True), data, root / "all")
        without = []
        for k in range(n):
            c = cfg.model_copy(deep=True)
            c.schedule.clients_per_round = n - 1 if full_participation else min(cfg.schedule.clients_per_round, n - 1)
            c.data.partition.num_clients = n - 1 if c.data.partition.kind != "natural" else c.data.partition.num_clients
            without.append(_final_metric(c, _without(data, k), root / f"without-{k}"))
    return {"full": full, "without": without, "contribution": [full - w for w in without]}
