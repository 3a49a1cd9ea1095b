"""Compatibility path: the method contracts live in :mod:`fedweave.core` (``core.strategy``,
``core.client``); the asynchronous merge base in :mod:`fedweave.methods.merge`."""

from ..core.client import ClientAlgorithm, ClientJob, JobResult, prox_hook
from ..core.strategy import Clock, ServerContext, ServerState, Strategy, average_buffers, size_weights, stack_deltas
from .merge import MergeStrategy, mix

__all__ = [
    "Clock", "ServerState", "ServerContext", "Strategy", "MergeStrategy", "mix", "stack_deltas", "size_weights",
    "average_buffers", "ClientJob", "JobResult", "ClientAlgorithm", "prox_hook",
]
