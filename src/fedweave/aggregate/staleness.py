"""Staleness functions for asynchronous aggregation: how much a late update still counts.

An update trained from global version ``v`` and arriving when the server is at version
``t`` has staleness ``τ = t − v ≥ 0`` (0: nothing was merged while the client trained).
Following Xie, Koyejo & Gupta 2019, *Asynchronous Federated Optimization* (FedAsync,
§5.2 "adaptive α"), a staleness function ``s(τ) ∈ (0, 1]`` scales the mixing weight
(FedAsync: ``α_t = α · s(τ)``) or the update (FedBuff, Nguyen et al. 2022:
``Δ̄ = (1/K) Σ_k s(τ_k) Δ_k``):

* ``constant``:   s(τ) = 1
* ``polynomial``: s(τ) = (τ + 1)^(−a)                         a ≥ 0
* ``hinge``:      s(τ) = 1 if τ ≤ b else 1 / (a (τ − b) + 1)   a ≥ 0, b ≥ 0

All are 1 at τ = 0, never increase with τ, and stay in (0, 1]. ``polynomial`` with
``a = 0.5`` is FedBuff's ``1/√(1 + τ)``; FedAsync's experiments use ``a = 0.5`` for
polynomial and ``a = 10, b = 4`` for hinge.

:func:`staleness` is the one definition of τ: the round ledger
(:mod:`fedweave.sim.ledger`) calls it to admit an arrival (``schedule.max_staleness``)
and to count it, and every staleness-aware strategy (FedAsync, FedBuff, FedASMU) calls
it for its weights, so τ is the same number everywhere.

The staleness functions are pure and take a Python number or a NumPy array of
staleness values (elementwise); a scalar input gives a float.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np

Number = Union[int, float, np.ndarray]

STALENESS_FUNCTIONS: dict[str, str] = {
    "constant": "s(τ) = 1 (staleness ignored)",
    "polynomial": "s(τ) = (τ + 1)^(−a)",
    "hinge": "s(τ) = 1 if τ ≤ b else 1 / (a (τ − b) + 1)",
}

__all__ = ["STALENESS_FUNCTIONS", "staleness", "constant", "polynomial", "hinge", "staleness_weight"]


def staleness(update, state) -> int:
    """τ of an update against the global ``state`` it is admitted to and merged into:
    the versions merged since the version it was trained from,
    ``τ = state.version − update.base_version``.

    In buffered mode the global version only moves when a buffer is merged, so every
    update of a buffer has the same τ at its arrival as at the merge.
    """
    return state.version - update.base_version


def _scalar_tau(tau) -> float | None:
    """A plain Python number as a float (the per-arrival fast path), else None."""
    if isinstance(tau, (int, float)) and not isinstance(tau, bool):
        t = float(tau)
        if not (t >= 0 and t != float("inf")):
            raise ValueError(f"staleness must be finite and >= 0, got {tau!r}")
        return t
    return None


def _tau(tau: Number) -> np.ndarray:
    t = np.asarray(tau, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"staleness must be finite and >= 0, got {tau!r}")
    return t


def _out(value: np.ndarray, tau: Number) -> Number:
    return float(value) if np.ndim(tau) == 0 else value


def _check(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"staleness parameter {name} must be a finite number >= 0, got {value!r}")


def constant(tau: Number) -> Number:
    """s(τ) = 1."""
    if _scalar_tau(tau) is not None:
        return 1.0
    t = _tau(tau)
    return _out(np.ones_like(t), tau)


def polynomial(tau: Number, a: float = 0.5) -> Number:
    """s(τ) = (τ + 1)^(−a)."""
    _check("a", a)
    st = _scalar_tau(tau)
    if st is not None:
        return (st + 1.0) ** (-float(a))
    t = _tau(tau)
    return _out(np.power(t + 1.0, -float(a)), tau)


def hinge(tau: Number, a: float = 10.0, b: float = 4.0) -> Number:
    """s(τ) = 1 if τ ≤ b, else 1 / (a (τ − b) + 1)."""
    _check("a", a)
    _check("b", b)
    st = _scalar_tau(tau)
    if st is not None:
        return 1.0 / (float(a) * max(st - float(b), 0.0) + 1.0)
    t = _tau(tau)
    over = np.maximum(t - float(b), 0.0)  # 0 where τ ≤ b, so the formula gives 1 there
    return _out(1.0 / (float(a) * over + 1.0), tau)


def staleness_weight(kind: str, tau: Number, a: float = 0.5, b: float = 4.0) -> Number:
    """The staleness function ``kind`` (one of :data:`STALENESS_FUNCTIONS`) at ``tau``.

    ``a`` is the exponent of ``polynomial`` and the slope of ``hinge``; ``b`` is the
    hinge's threshold. Parameters a kind does not use are ignored.
    """
    if kind == "constant":
        return constant(tau)
    if kind == "polynomial":
        return polynomial(tau, a)
    if kind == "hinge":
        return hinge(tau, a, b)
    raise ValueError(f"unknown staleness function {kind!r}; choose one of {', '.join(STALENESS_FUNCTIONS)}")
