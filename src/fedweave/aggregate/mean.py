"""Weighted averaging of client updates: the FedAvg rule.

McMahan et al. 2017, *Communication-Efficient Learning of Deep Networks from Decentralized
Data* (AISTATS), average client updates weighted by local data size:

    u = sum_k (w_k / sum_j w_j) u_k

computed here as one matrix product ``w @ U`` of the normalised weights ``[K]`` with the
stacked updates ``U`` ``[K, P]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedweave.aggregate._checks import check_updates


def weighted_mean(updates: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean ``[P]`` of the rows of ``updates`` ``[K, P]``.

    ``weights`` ``[K]`` are non-negative and normalised here to sum to one, so raw sample
    counts may be passed. Raises ValueError for K = 0, a shape mismatch, negative or
    non-finite weights, or weights that are all zero.
    """
    check_updates(updates)
    weights = torch.as_tensor(weights)
    if weights.dim() != 1 or weights.shape[0] != updates.shape[0]:
        raise ValueError(
            f"weights must have shape [{updates.shape[0]}] (one per row of updates), "
            f"got {tuple(weights.shape)}."
        )
    weights = weights.to(device=updates.device, dtype=updates.dtype)
    if not torch.isfinite(weights).all():
        raise ValueError("weights must be finite.")
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative, got {weights.tolist()}.")
    total = weights.sum()
    if total <= 0:
        raise ValueError("weights are all zero: no client contributes to the mean.")
    return (weights / total) @ updates
