"""The merge base of asynchronous methods (FedAsync, staleness-aware AFL, FedASMU):
every arrival is mixed into the global model, ``w_g ← (1 − w) w_g + w w_k``."""

from __future__ import annotations

import torch

from ..core.messages import Update
from ..core.strategy import ServerContext, ServerState, Strategy


class MergeStrategy(Strategy):
    """An asynchronous strategy that merges every arrival into the global model.
    ``aggregate`` merges a batch one update after another, in the given (client-id) order."""

    modes = ("async",)

    def aggregate(self, updates: list[Update], state: ServerState, ctx: ServerContext) -> ServerState:
        for u in updates:
            state = self.on_update(u, state, ctx)
        return state

    @staticmethod
    def merge(state: ServerState, update: Update, weight: float) -> None:
        """w_g ← (1 − w) w_g + w w_k for the trainable vector and float buffers, as new
        tensors (the engine's snapshots share tensors, so never in place)."""
        x_new = update.params if update.params is not None else state.params + update.delta
        state.params = mix(state.params, x_new.to(state.params.dtype), weight)
        if update.buffers is not None and state.buffers.numel():
            state.buffers = mix(state.buffers, update.buffers, weight)


def mix(x: torch.Tensor, x_new: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 − w) x + w x_new as a new tensor (never in place)."""
    return x + weight * (x_new - x) if x.numel() else x
