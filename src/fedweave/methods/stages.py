"""Composable server stages: weighting → combiner → server optimizer.

A staged method computes, for the cohort's deltas Δ_k (rows of a ``[K, P]`` matrix),

    p = normalise(weighting(updates))          e.g. n_k / Σ n_j
    d = combiner(Δ, p)                          e.g. Σ p_k Δ_k
    w_g, opt_state = server_opt.step(w_g, d)   e.g. w_g + d (FedAvg)

so a weighting from one paper combines with a combiner or optimizer from another. Float
buffers (BatchNorm statistics) always get a plain example-weighted mean.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..aggregate import weighted_mean
from ..errors import unknown_name
from ..messages import Update
from .base import ServerContext, ServerState, Strategy, average_buffers, size_weights, stack_deltas

Weighting = Callable[[list[Update], ServerState, ServerContext], torch.Tensor]
# (deltas [K, P], weights [K], server state, context) -> combined delta [P]
Combiner = Callable[[torch.Tensor, torch.Tensor, ServerState, ServerContext], torch.Tensor]


def size_weighting(updates, state, ctx) -> torch.Tensor:
    """p_k ∝ n_k, the number of examples the client trained on (FedAvg)."""
    return size_weights(updates)


def uniform_weighting(updates, state, ctx) -> torch.Tensor:
    """p_k = 1/K."""
    return torch.ones(len(updates), dtype=torch.float64)


WEIGHTINGS: dict[str, tuple[Weighting, str]] = {
    "size": (size_weighting, "proportional to the client's number of examples"),
    "uniform": (uniform_weighting, "equal weights"),
}


def mean_combiner(deltas: torch.Tensor, weights: torch.Tensor, state=None, ctx=None) -> torch.Tensor:
    return weighted_mean(deltas, weights.to(deltas.dtype))


COMBINERS: dict[str, tuple[Combiner, str]] = {
    "mean": (mean_combiner, "weighted mean of the deltas"),
}


def register_weighting(name: str, fn: Weighting, description: str) -> Weighting:
    """Make a weighting available as ``method.weighting: <name>`` (methods call this)."""
    if name in WEIGHTINGS:
        raise ValueError(f"weighting {name!r} registered twice")
    WEIGHTINGS[name] = (fn, description)
    return fn


def register_combiner(name: str, fn: Combiner, description: str) -> Combiner:
    """Make a combiner available as ``method.combiner: <name>`` (methods call this)."""
    if name in COMBINERS:
        raise ValueError(f"combiner {name!r} registered twice")
    COMBINERS[name] = (fn, description)
    return fn


def _registered() -> None:
    from .registry import registered

    registered()  # method modules register their stages on import


def get_weighting(name: str) -> Weighting:
    _registered()
    if name not in WEIGHTINGS:
        raise unknown_name("weighting", name, WEIGHTINGS)
    return WEIGHTINGS[name][0]


def get_combiner(name: str) -> Combiner:
    _registered()
    if name not in COMBINERS:
        raise unknown_name("combiner", name, COMBINERS)
    return COMBINERS[name][0]


class StagedStrategy(Strategy):
    # buffered mode merges full buffers with `aggregate`, exactly like a sync round;
    # async mode would hand single updates to a cohort-mean, which is not what these mean
    modes = ("sync", "buffered")

    def __init__(self, name: str, weighting: str, combiner: str, server_opt):
        self.name = name
        self.weighting_name = weighting
        self.combiner_name = combiner
        self.weighting = get_weighting(weighting)
        self.combiner = get_combiner(combiner)
        self.server_opt = server_opt

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        state.extra["opt"] = self.server_opt.init(state.params)
        return state

    def aggregate(self, updates: list[Update], state: ServerState, ctx: ServerContext) -> ServerState:
        if not updates:
            return state
        deltas = stack_deltas(updates)
        weights = self.weighting(updates, state, ctx)
        combined = self.combiner(deltas, weights, state, ctx)
        state.params, state.extra["opt"] = self.server_opt.step(state.params, combined, state.extra["opt"])
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state
