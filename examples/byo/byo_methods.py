"""A user's own aggregation code, outside the fedweave package: a weighting, a combiner and a
whole strategy. Importing this module registers them (``--import byo_methods`` or
``plugins: [byo_methods]``). Examples for the how-to, not published methods.

- weighting ``loss_aware``:   p_k ∝ n_k / (1 + L_k), L_k the client's mean training loss;
- combiner ``norm_capped_mean``:  Δ_k ← Δ_k · min(1, median_j ‖Δ_j‖ / ‖Δ_k‖), then Σ p_k Δ_k / Σ p_k
  (no update counts for more than a typical one: a cheap guard against one exploding client);
- strategy ``warmup_avg``:  w ← w + η_r Δ̄ with η_r = min(1, r / R), Δ̄ the size-weighted mean
  delta and R = ``method.warmup_rounds`` — a server step that ramps up over the first rounds.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from fedweave.methods.base import ClientAlgorithm, Strategy, average_buffers, stack_deltas
from fedweave.methods.registry import MethodInfo, MethodParams, Preset, register
from fedweave.methods.stages import register_combiner, register_weighting


def loss_aware(updates, state, ctx):
    """Raw weights [K], one per update, in the order given (client-id order)."""
    return torch.tensor([u.num_examples / (1.0 + float(u.metrics["loss"])) for u in updates], dtype=torch.float64)


def norm_capped_mean(deltas, weights, state, ctx):
    """deltas [K, P], weights [K] -> the combined delta [P]."""
    norms = deltas.norm(dim=1)
    cap = norms.median()
    scale = torch.where(norms > cap, cap / norms.clamp_min(1e-12), torch.ones_like(norms))
    w = weights.to(deltas.dtype) / weights.sum()
    return (w * scale) @ deltas


class WarmupParams(MethodParams):
    warmup_rounds: int = Field(5, ge=1, description="R: rounds over which the server step grows to 1")


class WarmupAverage(Strategy):
    name = "warmup_avg"
    modes = ("sync",)

    def __init__(self, warmup_rounds: int):
        self.warmup_rounds = warmup_rounds

    def aggregate(self, updates, state, ctx):
        if not updates:
            return state
        deltas = stack_deltas(updates)  # [K, P], client-id order
        n = torch.tensor([u.num_examples for u in updates], dtype=deltas.dtype)
        step = min(1.0, (state.round + 1) / self.warmup_rounds)
        return replace(state, params=state.params + step * (n / n.sum()) @ deltas,
                       buffers=average_buffers(updates, state), version=state.version + 1,
                       extra={**state.extra, "server_step": step})

    def metrics(self, state):
        return {"server_step": state.extra.get("server_step", 0.0)}  # a column of metrics.jsonl


# replace=True: importing the module twice (a notebook cell run again) re-registers quietly
register_weighting("loss_aware", loss_aware, "proportional to n_k / (1 + mean training loss)", replace=True)
register_combiner("norm_capped_mean", norm_capped_mean, "weighted mean after capping each update at the median norm",
                  replace=True)
register(MethodInfo(name="loss_aware_avg", summary="FedAvg weighted by n_k / (1 + loss) (example)",
                    citation="fedweave examples/byo", preset=Preset(weighting="loss_aware",
                                                                    combiner="norm_capped_mean")), replace=True)
register(MethodInfo(name="warmup_avg", summary="FedAvg whose server step ramps up over R rounds (example)",
                    citation="fedweave examples/byo", params=WarmupParams,
                    build=lambda config, params: (WarmupAverage(params.warmup_rounds),
                                                  ClientAlgorithm(config.client.objective, config.client.mu))),
         replace=True)
