"""Byzantine-robust combiners, shared by the methods named after them.

Each rule is a module of its own — :mod:`~fedweave.methods.median`,
:mod:`~fedweave.methods.trimmed_mean`, :mod:`~fedweave.methods.krum`,
:mod:`~fedweave.methods.multikrum`, :mod:`~fedweave.methods.bulyan`,
:mod:`~fedweave.methods.normclip` — which registers it both as a combiner stage
(``method.combiner: krum``, composing with any weighting and server optimizer) and as a
method (``method.name: krum``: size weighting, this combiner, server optimizer
``replace``). The maths is in :mod:`fedweave.aggregate` (pure functions, tested against
hand-computed values); this module binds the defender's assumptions and checks them at
config time:

``method.num_malicious`` is f, what the defense *assumes* (default 0); it never reads
``attack.*``. **Weights**: median, trimmed mean, Krum, Multi-Krum and Bulyan ignore the
weighting stage (every update counts once, as in their papers); only ``normclip`` uses it.

The cohort size K checked at config time is ``schedule.clients_per_round`` (sync) or the
buffer size (buffered). A round whose cohort ends up smaller than the combiner can defend
(dropped or late updates, Poisson sampling) is not aggregated: the combined update is zero
and ``robust_skipped_rounds`` counts it.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..aggregate import bulyan, clip_by_norm, krum, median, trimmed_mean, weighted_mean
from ..core.errors import ConfigError


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FParams(_Params):
    num_malicious: int = Field(0, ge=0, description="f: Byzantine clients the defense assumes per cohort")


class TrimParams(FParams):
    trim_beta: Optional[float] = Field(None, ge=0, lt=0.5, description="share trimmed from each side (default: f per side, or 0.2)")


class MultiKrumParams(FParams):
    num_selected: Optional[int] = Field(None, ge=1, description="m: updates averaged (default K - f)")


class NormClipParams(_Params):
    clip_norm: Optional[float] = Field(None, gt=0, description="M: bound on each update's norm (default: the round's median norm)")


def cohort_size(config) -> int | None:
    """The number of updates each aggregation sees, when the schedule fixes it."""
    s = config.schedule
    if s.mode == "buffered":
        return s.buffer_size or s.clients_per_round
    if s.mode == "sync" and s.sampling != "poisson":
        return s.clients_per_round
    return None


def requirement(kind: str, f: int, k: int, beta: float | None = None) -> str | None:
    """Why a cohort of k updates cannot be defended against f attackers by ``kind`` (None: it can)."""
    if kind == "median" and k < 2 * f + 1:
        return f"the median needs K >= 2f + 1 = {2 * f + 1}"
    if kind in ("krum", "multikrum") and k <= 2 * f + 2:
        return f"Krum needs K > 2f + 2, i.e. K >= {2 * f + 3}"
    if kind == "bulyan" and k < 4 * f + 3:
        return f"Bulyan needs K >= 4f + 3 = {4 * f + 3}"
    if kind == "trimmed_mean":
        b = _trim_count(f, k, beta)
        if b < f:
            return f"trim_beta={beta} trims b = {b} < f = {f} values per side"
        if 2 * b >= k:
            return f"trimming b = {b} per side leaves nothing of K = {k}"
    return None


def _trim_count(f: int, k: int, beta: float | None) -> int:
    from ..aggregate.coordinate import trim_count

    if beta is not None:
        return trim_count(beta, k)
    return f if f > 0 else trim_count(0.2, k)


class RobustCombiner:
    """A combiner stage bound to the defender's assumptions."""

    device_safe = True  # fedweave.aggregate follows its inputs' device (StagedStrategy may use the GPU)

    def __init__(self, kind: str, f: int = 0, beta: float | None = None, num_selected: int | None = None,
                 clip_norm: float | None = None):
        self.kind = kind
        self.f = f
        self.beta = beta
        self.num_selected = num_selected
        self.clip_norm = clip_norm

    def init(self, state, ctx) -> None:
        state.extra.setdefault("robust_skipped", 0)

    def metrics(self, state) -> dict:
        return {"robust_skipped_rounds": int(state.extra.get("robust_skipped", 0))}

    def __call__(self, deltas: torch.Tensor, weights: torch.Tensor, state=None, ctx=None) -> torch.Tensor:
        k = deltas.shape[0]
        if requirement(self.kind, self.f, k, self.beta) is not None:
            if state is not None:
                state.extra["robust_skipped"] = int(state.extra.get("robust_skipped", 0)) + 1
            return torch.zeros_like(deltas[0])
        kind, f = self.kind, self.f
        if kind == "median":
            return median(deltas)
        if kind == "trimmed_mean":
            b = _trim_count(f, k, self.beta)
            return trimmed_mean(deltas, b / k) if b else deltas.mean(dim=0)
        if kind == "krum":
            return krum(deltas, f, 1)
        if kind == "multikrum":
            m = self.num_selected if self.num_selected is not None else k - f
            return krum(deltas, f, min(m, k))
        if kind == "bulyan":
            return bulyan(deltas, f)
        if kind == "normclip":
            bound = self.clip_norm
            if bound is None:
                bound = float(torch.linalg.vector_norm(deltas, dim=1).median())
            clipped = clip_by_norm(deltas, bound) if bound > 0 else deltas
            return weighted_mean(clipped, weights.to(deltas.dtype))
        raise ValueError(f"unknown robust combiner {kind!r}")


def robust_combiner(kind: str):
    """The combiner-stage factory ``(config, params) -> RobustCombiner`` for ``kind``;
    refuses at config time a cohort too small for the assumed f."""

    def build(config, params) -> RobustCombiner:
        f = getattr(params, "num_malicious", 0)
        beta = getattr(params, "trim_beta", None)
        k = cohort_size(config)
        if k is not None:
            why = requirement(kind, f, k, beta)
            if why is not None:
                raise ConfigError(
                    f"Combiner {kind!r} cannot tolerate method.num_malicious={f} with cohorts of K={k} updates: {why}. "
                    "Lower method.num_malicious or raise schedule.clients_per_round."
                )
            m = getattr(params, "num_selected", None)
            if m is not None and m > k:
                raise ConfigError(f"method.num_selected={m} exceeds the K={k} updates of a cohort.")
        return RobustCombiner(kind, f, beta, getattr(params, "num_selected", None), getattr(params, "clip_norm", None))

    return build
