"""Methods: one module per method, registered by name.

``fedweave.methods.get_method(name)`` returns a method's registry entry and
``build_method(config)`` its (strategy, client algorithm) pair.

Method modules are discovered, not listed: adding ``methods/<name>.py`` that calls
``register(...)`` (and, for its stages, ``register_weighting``/``register_combiner``) is
all it takes. This package imports every one of them once, here, so the registries are
complete before anything can look a name up (importing any ``fedweave.methods.*`` module
runs this first); the registries themselves import no method.
"""

import importlib
import pkgutil

from ..core.client import ClientAlgorithm, ClientJob, JobResult
from ..core.strategy import ServerContext, ServerState, Strategy
from .registry import MethodInfo, MethodParams, Preset, build_method, get_method, register, registered

__all__ = [
    "ClientAlgorithm", "ClientJob", "JobResult", "ServerContext", "ServerState", "Strategy",
    "MethodInfo", "MethodParams", "Preset", "build_method", "get_method", "register", "registered",
]

# the framework's own modules; every other public module here is a method
_FRAMEWORK = {"base", "distill", "merge", "needs", "registry", "rejection", "robust", "stages", "threat_adapter"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in _FRAMEWORK:
        importlib.import_module(f"{__name__}.{_info.name}")
