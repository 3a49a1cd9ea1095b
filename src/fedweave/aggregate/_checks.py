"""Shape checks shared by the aggregation functions."""

from __future__ import annotations

import torch
from torch import Tensor


def check_updates(updates: Tensor, name: str = "updates") -> Tensor:
    """Require a floating ``[K, P]`` tensor with at least one row."""
    if not isinstance(updates, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(updates).__name__}.")
    if updates.dim() != 2:
        raise ValueError(
            f"{name} must be a [K, P] tensor (one row per client), "
            f"got shape {tuple(updates.shape)}."
        )
    if updates.shape[0] == 0:
        raise ValueError(f"{name} has no rows: cannot aggregate zero clients (K = 0).")
    if not torch.is_floating_point(updates):
        raise TypeError(f"{name} must have a floating dtype, got {updates.dtype}.")
    return updates


def check_count(value: int, name: str, minimum: int = 0) -> int:
    """Require an integer ``>= minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value
