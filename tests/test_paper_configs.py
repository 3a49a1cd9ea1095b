"""benchmarks/papers/: every paper-scale config builds (not runs) with its dataset replaced by a
tiny stand-in of the same shape and number of classes, so the configs never rot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import fedweave
from fedweave.config import deep_merge

PAPERS = Path(__file__).resolve().parents[1] / "benchmarks" / "papers"
CONFIGS = sorted(PAPERS.glob("*.yaml"))

# file-based sources: (input shape, classes) of the real data, which the stand-in copies
SHAPES = {"cifar10": ((3, 32, 32), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
          "cifar100.npz": ((3, 32, 32), 100)}


def _stand_in(tmp_path: Path, shape, classes: int, n: int = 240) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / f"standin-{classes}-{'x'.join(map(str, shape))}.npz"
    if not path.exists():
        y = np.arange(n) % classes
        np.savez(path, x=rng.random((n, *shape), dtype=np.float32), y=y,
                 x_test=rng.random((n // 4, *shape), dtype=np.float32), y_test=np.arange(n // 4) % classes)
    return str(path)


def _tiny(cfg: dict, tmp_path: Path) -> dict:
    data = cfg["data"]
    dataset = data["dataset"]
    prefix = ""
    if dataset.startswith("sr") and ":" in dataset:
        prefix, dataset = dataset.split(":", 1)[0] + ":", dataset.split(":", 1)[1]
    key = Path(data.get("root", "")).name if dataset == "npz" else dataset
    if key in SHAPES:
        shape, classes = SHAPES[key]
        data = {**data, "dataset": prefix + "npz", "root": _stand_in(tmp_path, shape, classes)}
    # a few clients on the stand-in; the method, model and schedule stay as written
    part = data.get("partition", {})
    n_clients = min(part.get("num_clients", 10), 6)
    data = deep_merge(data, {"partition": {"num_clients": n_clients, **({"alpha": 100.0} if part.get("kind") == "dirichlet" else {})}})
    if "synthetic" in data:
        data = deep_merge(data, {"synthetic": {"num_clients": n_clients}})
    if "pretrain" in cfg.get("model", {}).get("kwargs", {}):
        cfg = deep_merge(cfg, {"model": {"kwargs": {"pretrain": {"epochs": 1}}}})
    sched = dict(cfg.get("schedule", {}))
    if "clients_per_round" in sched:
        sched["clients_per_round"] = min(sched["clients_per_round"], n_clients)
    if "concurrency" in sched:
        sched["concurrency"] = min(sched["concurrency"], n_clients)
    return {**cfg, "data": data, "schedule": sched}


def test_there_is_a_config_per_seed_method_and_baseline():
    names = {p.stem for p in CONFIGS}
    for method in ("fedasmu", "afl_staleness", "feddisco", "fedlaw", "ldawa", "fedce", "fedvsr", "frl", "flip", "fal",
                   "pgfed", "fedins", "plora", "ferret", "fsar", "eavesdropper"):
        own = [n for n in names if n.startswith(method + "-") and "--" not in n]
        base = [n for n in names if n.startswith(method + "-") and "--" in n]
        assert own and base, f"benchmarks/papers/ lacks {method}'s config or its baseline's"
    readme = (PAPERS / "README.md").read_text()
    for p in CONFIGS:
        assert p.name in readme, f"{p.name} is not in benchmarks/papers/README.md"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_paper_config_builds_on_a_tiny_stand_in(path, tmp_path):
    cfg = yaml.safe_load(path.read_text())
    exp = fedweave.build_experiment(fedweave.load_config(_tiny(cfg, tmp_path)))
    assert exp.config.method.name == cfg["method"]["name"]
    assert exp.spec.num_params > 0
