"""Compatibility path: the client-state store lives in :mod:`fedweave.core.state_store`
(checkpoints written before the move name ``fedweave.sim.state_store.SpilledState``)."""

from ..core.state_store import ClientStateStore, LOW_WATER, SpilledState, state_bytes

__all__ = ["LOW_WATER", "ClientStateStore", "SpilledState", "state_bytes"]
