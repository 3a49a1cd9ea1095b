"""L-DAWA — Rehman et al., "L-DAWA: Layer-wise Divergence Aware Weight Aggregation in
Federated Self-Supervised Visual Representation Learning", ICCV 2023 (official code:
yasar-rehman/L-DAWA, ``L-DAWA-Agg.py``).

Each client model w_k = w_g + Δ_k is scaled, unit by unit, by its angular agreement with
the global model it started from, then the scaled models are averaged:

    δ_k^u = min(1, cos(w_k^u, w_g^u))           per client k and unit u
    w_g^u ← Σ_k p_k δ_k^u w_k^u                  p_k = 1/K in the paper (weighting "uniform")

The combiner returns the delta Σ_k p_k δ_k^u w_k^u − w_g^u, so any server optimizer can
apply it (``replace`` gives the paper's rule).

The shrink (deliberate, as in the official code): the coefficients p_k δ_k^u are *not*
renormalised — the code multiplies each client's tensor by its cosine and divides the sum
by K. With equal cosines c the result is c × the weighted mean, so every unit shrinks
towards 0 by Σ_k p_k δ_k^u < 1 each round (a weight decay). ``normalize: true`` divides
each unit's coefficients by their sum Σ_k p_k δ_k^u (a pure re-weighting: equal cosines
give the weighted mean); it is our option, not the paper's, and it separates the two
effects. When that sum is ≤ 1e-12 (negative cosines cancelling) the unit falls back to the
weighted mean.

Decisions, and where they follow the paper or the official code:
* Unit: the paper's word is "layer"; the official aggregation iterates over the model's
  state-dict entries (Flower's list of arrays), i.e. one cosine per parameter *tensor*
  (a weight and its bias are scored separately). ``granularity: tensor`` (default) does
  that; ``granularity: module`` (our option) takes a module's weight and bias together as
  one unit (``ParamSpec.layers()``).
* Warm-up: the first ``warmup_rounds`` rounds (3, as in the code: L-DAWA from round
  index 3) use the plain weighted mean (FedAvg). Method ``ldawa`` uses the weighting
  ``uniform`` (the paper's 1/K), so its warm-up is a uniform mean; the code's warm-up is
  size-weighted (set ``method.weighting=size`` for that, which also size-weights the
  L-DAWA rounds).
* Negative cosines: the code keeps them (the unit is flipped). ``negative_cosine: keep``
  (default) does the same; ``zero`` clamps δ at 0 so a client never contributes a
  flipped unit. A zero-norm unit (client or global) gets δ = 1 (the code leaves a zero
  client tensor unscaled).
* Every evaluation record after the warm-up carries ``ldawa_delta_mean`` and
  ``ldawa_delta_min``, the mean and smallest δ_k^u of the round: without ``normalize``,
  δ < 1 shrinks the unit, so they show how much weight decay the rule applies.
* BatchNorm statistics: the code scales running means/variances by their cosine too; here
  float buffers get the framework's plain example-weighted mean (the stages never see
  buffers). The default models use GroupNorm and have no buffers.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..aggregate import weighted_mean
from .registry import MethodInfo, Preset, register
from .stages import register_combiner


class LDawaParams(BaseModel):
    """Parameters of the ``ldawa`` combiner."""

    model_config = ConfigDict(extra="forbid")
    warmup_rounds: int = Field(3, ge=0, description="rounds of plain weighted averaging first")
    granularity: Literal["tensor", "module"] = Field(
        "tensor", description="tensor: one cosine per parameter tensor (official code); module: weight and bias together"
    )
    normalize: bool = Field(
        False, description="divide each unit's coefficients p_k·δ_k by their sum (false: the official un-normalised shrink)"
    )
    negative_cosine: Literal["keep", "zero"] = Field("keep", description="keep negative δ (as the code) or clamp at 0")


def layer_slices(spec, granularity: str = "module") -> list[slice]:
    """Slices of the trainable vector that form L-DAWA's units (``module`` or ``tensor``)."""
    if granularity == "module":
        return [s for _, s in spec.layers()]
    return [seg.slice for seg in spec.group("trainable")]


def ldawa_cosines(global_params: torch.Tensor, deltas: torch.Tensor, slices: list[slice], negative: str = "keep") -> torch.Tensor:
    """δ ``[K, U]``: min(1, cos(w_k^u, w_g^u)) with w_k = w_g + Δ_k (1 for zero-norm units)."""
    clients = global_params.unsqueeze(0) + deltas
    out = torch.ones(deltas.shape[0], len(slices), dtype=torch.float64)
    for j, s in enumerate(slices):
        wk, wg = clients[:, s].to(torch.float64), global_params[s].to(torch.float64)
        norms = wk.norm(dim=1) * wg.norm()
        cos = torch.where(norms > 0, (wk @ wg) / norms.clamp_min(1e-300), torch.ones_like(norms))
        out[:, j] = cos.clamp(max=1.0)
    if negative == "zero":
        out.clamp_(min=0.0)
    return out


def ldawa_combine(global_params: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor, slices: list[slice],
                  negative: str = "keep", delta_cos: torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
    """The delta Σ_k c_k^u w_k^u − w_g^u, unit by unit, with c_k^u = p_k δ_k^u (p normalised to
    sum 1); with ``normalize`` each unit's c^u is divided by its sum."""
    p = weights.to(torch.float64)
    p = p / p.sum()
    if delta_cos is None:
        delta_cos = ldawa_cosines(global_params, deltas, slices, negative)
    coeff = p.unsqueeze(1) * delta_cos  # [K, U]
    if normalize:
        total = coeff.sum(dim=0, keepdim=True)
        usable = total > 1e-12
        # cancelling negative cosines leave no direction to renormalise: plain weighted mean
        coeff = torch.where(usable, coeff / total.clamp_min(1e-12), p.unsqueeze(1).expand_as(coeff))
    coeff = coeff.to(deltas.dtype)
    clients = global_params.unsqueeze(0) + deltas
    new = global_params.clone()
    for j, s in enumerate(slices):
        new[s] = coeff[:, j] @ clients[:, s]
    return new - global_params


class LDawaCombiner:
    def __init__(self, params: LDawaParams):
        self.warmup_rounds = params.warmup_rounds
        self.granularity = params.granularity
        self.negative = params.negative_cosine
        self.normalize = params.normalize
        self._slices = None

    def __call__(self, deltas, weights, state, ctx) -> torch.Tensor:
        if state.round < self.warmup_rounds:
            return weighted_mean(deltas, weights.to(deltas.dtype))
        if self._slices is None:
            self._slices = layer_slices(ctx.spec, self.granularity)
        delta_cos = ldawa_cosines(state.params, deltas, self._slices, self.negative)
        state.extra["ldawa_delta_mean"] = float(delta_cos.mean())
        state.extra["ldawa_delta_min"] = float(delta_cos.min())
        return ldawa_combine(state.params, deltas, weights, self._slices, self.negative, delta_cos, self.normalize)

    def metrics(self, state) -> dict:
        """Mean and smallest δ_k^l of the last L-DAWA round (absent during warm-up)."""
        if "ldawa_delta_mean" not in state.extra:
            return {}
        return {"ldawa_delta_mean": state.extra["ldawa_delta_mean"], "ldawa_delta_min": state.extra["ldawa_delta_min"]}


def _make_ldawa(config, params: LDawaParams) -> LDawaCombiner:
    return LDawaCombiner(params)


register_combiner(
    "ldawa",
    _make_ldawa,
    "L-DAWA: per-tensor cosine(w_k, w_g)-scaled average after method.warmup_rounds of FedAvg",
    params=LDawaParams,
)

METHOD = register(
    MethodInfo(
        name="ldawa",
        summary="divergence-aware averaging: w_g^u = (1/K) sum_k cos(w_k^u, w_g^u) w_k^u per tensor u",
        citation="Rehman et al., ICCV 2023",
        preset=Preset(weighting="uniform", combiner="ldawa", server_opt="replace"),
    )
)
