"""The :class:`Observer` contract: something that sees a run without changing it."""

from __future__ import annotations

from typing import Any

from torch import nn

from .messages import Update
from .strategy import ServerState


class Observer:
    """Sees what happens in a run without changing it (an eavesdropper, a logger).

    Every method is optional to override; observer state goes into checkpoints.
    """

    def on_upload(self, update: Update, round_: int) -> None:
        """An uplink message arrived (in arrival order), accepted or not."""

    def on_round_end(self, state: ServerState, round_: int) -> None:
        """An aggregation is done (a sync round, an async merge, a buffer flush)."""

    def evaluate(self, module: nn.Module, state: ServerState) -> dict[str, Any]:
        """Extra figures for the evaluation record (the global model is loaded in ``module``)."""
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
