"""Coordinate-wise robust aggregation.

Yin et al. 2018, *Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates* (ICML), aggregate each coordinate ``p`` of the client updates separately:

* median: ``med_p = median_k u_{k,p}``. For an even number of clients K this is the mean of
  the two middle values, ``(s_{K/2} + s_{K/2+1}) / 2`` of the sorted values ``s`` (note
  that ``torch.median`` returns the lower one instead, so it is not used here).
* beta-trimmed mean: with ``b = floor(beta K)``, drop the ``b`` largest and the ``b``
  smallest values of each coordinate and average the remaining ``K - 2b``:
  ``tm_p = (1 / (K - 2b)) sum_{i=b+1}^{K-b} s_i``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedweave.aggregate._checks import check_updates


def sorted_rows(updates: Tensor) -> Tensor:
    """``updates`` ``[K, P]`` with each column sorted in increasing order (a new tensor).

    CPU float32/float64 tensors that need no gradient are sorted by numpy's vectorised
    (SIMD) sort along axis 0, several times faster than ``torch.sort`` along a strided
    dimension for small K; other tensors use ``torch.sort``. NaNs sort last in both.
    """
    if updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64) and not updates.requires_grad:
        return torch.from_numpy(np.sort(updates.detach().resolve_neg().resolve_conj().numpy(), axis=0))
    return updates.sort(dim=0).values


def sort_rows_(updates: Tensor) -> Tensor:
    """Like :func:`sorted_rows`, but sorts a contiguous CPU float tensor in place (no copy)."""
    if (updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64) and not updates.requires_grad
            and updates.is_contiguous() and not updates.is_neg() and not updates.is_conj()):
        updates.numpy().sort(axis=0)
        return updates
    return sorted_rows(updates)


def median(updates: Tensor) -> Tensor:
    """Coordinate-wise median ``[P]`` of ``updates`` ``[K, P]``; even K averages the middle two."""
    check_updates(updates)
    k = updates.shape[0]
    ordered = sorted_rows(updates)
    if k % 2 == 1:
        return ordered[k // 2].clone()
    return 0.5 * (ordered[k // 2 - 1] + ordered[k // 2])


def trim_count(beta: float, k: int) -> int:
    """``floor(beta K)``, robust to rounding such as ``0.29 * 100 = 28.999...``."""
    return math.floor(beta * k + 1e-9)


def trimmed_mean(updates: Tensor, beta: float) -> Tensor:
    """Coordinate-wise beta-trimmed mean ``[P]`` of ``updates`` ``[K, P]``.

    Drops ``floor(beta K)`` largest and smallest values per coordinate; ``beta = 0`` is
    the plain mean, and ``beta = 0.5`` with odd K the median. Raises ValueError when
    ``beta`` is outside ``[0, 0.5]`` or nothing would remain (``2 floor(beta K) >= K``).
    """
    check_updates(updates)
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 0.5):
        raise ValueError(f"trimmed mean beta must be in [0, 0.5], got {beta!r}.")
    k = updates.shape[0]
    b = trim_count(beta, k)
    if 2 * b >= k:
        raise ValueError(
            f"trimmed mean with beta={beta} drops 2*{b} of K={k} values per coordinate, "
            "leaving none; lower beta or aggregate more clients."
        )
    if b == 0:
        return updates.mean(dim=0)
    ordered = sorted_rows(updates)
    return ordered[b : k - b].mean(dim=0)
