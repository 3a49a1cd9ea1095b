"""L-DAWA — Rehman et al., "L-DAWA: Layer-wise Divergence Aware Weight Aggregation in
Federated Self-Supervised Visual Representation Learning", ICCV 2023 (official code:
yasar-rehman/L-DAWA).

Each client model w_k = w_g + Δ_k is scaled, layer by layer, by its angular agreement
with the global model it started from, then the scaled models are averaged:

    δ_k^l = min(1, cos(w_k^l, w_g^l))          per client k and layer l
    w_g^l ← Σ_k p_k δ_k^l w_k^l                 p_k = 1/K in the paper (weighting "uniform")

The combiner returns the delta Σ_k p_k δ_k^l w_k^l − w_g^l, so any server optimizer can
apply it (``replace`` gives the paper's rule). With δ = 1 everywhere it is the weighted
mean of the client models; since δ ≤ 1, L-DAWA also shrinks each layer a little towards 0
wherever clients drift from the global direction.

Decisions, and where they follow the paper or the official code:
* Warm-up: the first ``warmup_rounds`` rounds (3, as in the code: L-DAWA from round
  index 3) use the plain weighted mean (FedAvg). Method ``ldawa`` uses the weighting
  ``uniform`` (the paper's 1/K), so its warm-up is a uniform mean; the code's warm-up is
  size-weighted (set ``method.weighting=size`` for that, which also size-weights the
  L-DAWA rounds).
* Layers: ``granularity: layer`` (default) takes a module's weight and bias together as
  one layer (the paper's unit; ``ParamSpec.layers()``); ``granularity: tensor`` scores
  every parameter tensor separately, as the code does with state-dict entries.
* Negative cosines: the code keeps them (the layer is flipped). ``negative_cosine: keep``
  (default) does the same; ``zero`` clamps δ at 0 so a client never contributes a
  flipped layer. A zero-norm layer (client or global) gets δ = 1 (the code leaves a zero
  client layer unscaled).
* Every evaluation record after the warm-up carries ``ldawa_delta_mean`` and
  ``ldawa_delta_min``, the mean and smallest δ_k^l of the round: since δ < 1 shrinks the
  layer, they show how much weight decay the rule applies.
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
    granularity: Literal["layer", "tensor"] = Field("layer", description="layer: module (weight+bias); tensor: each tensor")
    negative_cosine: Literal["keep", "zero"] = Field("keep", description="keep negative δ (as the code) or clamp at 0")


def layer_slices(spec, granularity: str = "layer") -> list[slice]:
    """Slices of the trainable vector that form L-DAWA's layers."""
    if granularity == "layer":
        return [s for _, s in spec.layers()]
    return [seg.slice for seg in spec.group("trainable")]


def ldawa_cosines(global_params: torch.Tensor, deltas: torch.Tensor, slices: list[slice], negative: str = "keep") -> torch.Tensor:
    """δ ``[K, L]``: min(1, cos(w_k^l, w_g^l)) with w_k = w_g + Δ_k (1 for zero-norm layers)."""
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
                  negative: str = "keep", delta_cos: torch.Tensor | None = None) -> torch.Tensor:
    """The delta Σ_k p_k δ_k^l w_k^l − w_g^l, layer by layer (p normalised to sum 1)."""
    p = weights.to(torch.float64)
    p = p / p.sum()
    if delta_cos is None:
        delta_cos = ldawa_cosines(global_params, deltas, slices, negative)
    coeff = (p.unsqueeze(1) * delta_cos).to(deltas.dtype)  # [K, L]
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
        self._slices = None

    def __call__(self, deltas, weights, state, ctx) -> torch.Tensor:
        if state.round < self.warmup_rounds:
            return weighted_mean(deltas, weights.to(deltas.dtype))
        if self._slices is None:
            self._slices = layer_slices(ctx.spec, self.granularity)
        delta_cos = ldawa_cosines(state.params, deltas, self._slices, self.negative)
        state.extra["ldawa_delta_mean"] = float(delta_cos.mean())
        state.extra["ldawa_delta_min"] = float(delta_cos.min())
        return ldawa_combine(state.params, deltas, weights, self._slices, self.negative, delta_cos)

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
    "L-DAWA: layer-wise cosine(w_k, w_g)-scaled average after method.warmup_rounds of FedAvg",
    params=LDawaParams,
)

METHOD = register(
    MethodInfo(
        name="ldawa",
        summary="layer-wise divergence-aware averaging: w_g^l = (1/K) sum_k cos(w_k^l, w_g^l) w_k^l",
        citation="Rehman et al., ICCV 2023",
        preset=Preset(weighting="uniform", combiner="ldawa", server_opt="replace"),
    )
)
