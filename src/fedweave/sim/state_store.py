"""The client-state store: per-client tensors that persist across rounds.

SCAFFOLD's control variates, personal model segments, FLIP's triggers... live here,
owned by the simulator rather than by the executor's workers, so any worker can run any
client. Stateless clients cost nothing: nothing is stored until a client has state.
"""

from __future__ import annotations

from typing import Any


class ClientStateStore:
    def __init__(self):
        self._states: dict[int, dict[str, Any]] = {}

    def get(self, client_id: int) -> dict[str, Any] | None:
        return self._states.get(client_id)

    def put(self, client_id: int, state: dict[str, Any] | None) -> None:
        if state is not None:
            self._states[client_id] = state

    def __len__(self) -> int:
        return len(self._states)

    def state_dict(self) -> dict[int, dict[str, Any]]:
        return dict(self._states)

    def load_state_dict(self, states: dict[int, dict[str, Any]]) -> None:
        self._states = {int(k): v for k, v in states.items()}
