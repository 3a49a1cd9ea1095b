"""Small shared validators for the data package (internal)."""

from __future__ import annotations

import math

import numpy as np

from fedweave.core.errors import ConfigError


def as_labels(labels, what: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array of non-negative class ids.

    Raises ConfigError when the array is not 1-D, not integral, or negative,
    because every partitioner and split indexes classes by these values.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ConfigError(f"{what} must be a 1-D array of class ids; got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
            raise ConfigError(f"{what} must hold integer class ids; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ConfigError(f"{what} must be non-negative class ids; found {int(arr.min())}.")
    return arr


def check_int(value, name: str, *, low: int, high: int | None = None) -> int:
    """Check that ``value`` is an integer in ``[low, high]`` and return it as int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer; got {value!r}.")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{name} must be {allowed}; got {value}.")
    return value


def check_fraction(value, name: str, *, allow_zero: bool = True) -> float:
    """Check that ``value`` is a float in ``[0, 1)`` (or ``(0, 1)``) and return it."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1); got {value!r}.") from None
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be in {interval}; got {value}.")
    return value


def round_half_up(x: float) -> int:
    """Round to the nearest integer with halves going up (Python's round() goes to even)."""
    return int(math.floor(x + 0.5))


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Split the integer ``total`` proportionally to ``weights`` (Hamilton's method).

    Each entry gets the floor of its exact share; the leftover units (fewer
    than the number of entries) go to the largest fractional parts, ties to the
    lower index, so the result sums to ``total`` exactly. When the weights are
    counts and ``total <= sum(weights)``, no entry exceeds its count.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0 or weights.size == 0:
        return np.zeros(weights.shape, dtype=np.int64)
    wsum = weights.sum()
    if wsum <= 0:
        # Degenerate weights: share equally rather than divide by zero.
        weights, wsum = np.ones_like(weights), float(weights.size)
    exact = weights * (total / wsum)
    base = np.floor(exact).astype(np.int64)
    left = int(total - base.sum())
    if left > 0:
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:left]] += 1
    return base


def group_by_owner(owner: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Turn an owner array (owner[i] = group of example i) into sorted index arrays.

    A stable argsort keeps each group's indices in increasing order, so no
    per-group sort is needed.
    """
    order = np.argsort(owner, kind="stable").astype(np.int64)
    counts = np.bincount(owner, minlength=num_groups)
    return [part for part in np.split(order, np.cumsum(counts)[:-1])]
