"""Methods: one module per method, registered by name.

``fedweave.methods.get_method(name)`` returns a method's registry entry and
``build_method(config)`` its (strategy, client algorithm) pair.
"""

from ..core.client import ClientAlgorithm, ClientJob, JobResult
from ..core.strategy import ServerContext, ServerState, Strategy
from .registry import MethodInfo, MethodParams, Preset, build_method, get_method, register, registered

__all__ = [
    "ClientAlgorithm", "ClientJob", "JobResult", "ServerContext", "ServerState", "Strategy",
    "MethodInfo", "MethodParams", "Preset", "build_method", "get_method", "register", "registered",
]
