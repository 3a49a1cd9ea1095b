"""Shared fixtures for the top-level tests: tiny, fast experiment configs."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("fedweave") is None:  # src layout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "num_clients": 5, "alpha": 0.5}},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
    "schedule": {"rounds": 3, "clients_per_round": 3},
}


@pytest.fixture
def tiny():
    """``tiny(**sections)`` → a small config dict (digits, 5 clients, mlp[16], 3 rounds)."""

    def make(extra: dict | None = None) -> dict:
        return _merge(TINY, extra or {})

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test problems are tiny: one torch thread is faster and immune to a busy machine.
    (Runs set their own thread count from ``executor.threads`` anyway.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def device() -> str:
    """The device the device-dependent tests run on: ``FEDWEAVE_TEST_DEVICE`` (default
    ``cpu``; ``bench/gpu.sh`` sets ``cuda``). Skips, saying why, where it does not exist."""
    import os

    name = os.environ.get("FEDWEAVE_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"FEDWEAVE_TEST_DEVICE={name} but this machine has no CUDA device")
    return name
