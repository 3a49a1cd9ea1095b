"""fedweave: federated learning where global aggregation is the first-class citizen.

>>> import fedweave
>>> result = fedweave.run({"schedule": {"rounds": 5}})   # the built-in quickstart, shorter
>>> result.summary["final_accuracy"]

The package imports lazily: ``import fedweave`` (and ``fedweave --help``) does not load
torch; the first use of ``run``, ``sweep`` or ``build_experiment`` does.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access, PEP 562)
_LAZY = {
    "Config": "config", "load_config": "config",
    "FedweaveError": "core.errors", "ConfigError": "core.errors", "DataError": "core.errors",
    "ModelError": "core.errors", "DivergedError": "core.errors",
    "run": "experiment", "resume": "experiment", "build_experiment": "experiment", "RunResult": "experiment",
    "sweep": "sweep", "import_plugins": "plugins",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedweave' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
