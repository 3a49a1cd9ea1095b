"""FedAsync — Xie, Koyejo & Gupta, "Asynchronous Federated Optimization", OPT workshop
(NeurIPS) 2020, arXiv:1903.03934 (2019), Algorithm 1.

Every arriving client model is merged at once (``schedule.mode: async``):

    x_t ← (1 − α_t) x_{t−1} + α_t x_new,      α_t = α · s(τ),   τ = t − v

where ``x_new`` is the client's new model, trained from global version ``v`` (the
staleness τ of aggregate.staleness.staleness), ``α ∈ (0, 1]`` the mixing
hyperparameter (``method.alpha``, default 0.6: the paper's experiments use 0.6–0.9) and
``s`` a staleness function (``method.staleness``, see
:mod:`fedweave.aggregate.staleness`): ``constant`` 1, ``polynomial`` (τ+1)^−a, ``hinge``
1 if τ ≤ b else 1/(a(τ−b)+1). Defaults: polynomial with a = 0.5 (the paper's
"FedAsync+Poly"); its hinge experiments use a = 10, b = 4.

Decisions:

* The client uploads its full new trainable vector (``upload_full_model``), as in the
  paper, where the server mixes models; the uplink is counted as the full model.
* Float buffers (BatchNorm statistics) are mixed with the same α_t.
* The paper's clients minimise ``f(x) + (ρ/2)‖x − x_t‖²``: that is ``client.objective:
  prox`` with ``client.mu = ρ``; the default client objective is plain local SGD
  (the paper's ρ = 0 runs).
* The paper's scheduler triggers clients at random; fedweave's async mode keeps
  ``schedule.concurrency`` clients busy and gives a freed slot to a uniformly random
  idle client, and drops arrivals staler than ``schedule.max_staleness``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..aggregate.staleness import staleness, staleness_weight
from ..core.client import ClientAlgorithm
from ..core.strategy import ServerState
from .merge import MergeStrategy
from .registry import MethodInfo, MethodParams, register


class FedAsyncParams(MethodParams):
    alpha: float = Field(0.6, gt=0, le=1, description="mixing weight α ∈ (0, 1]")
    staleness: Literal["constant", "polynomial", "hinge"] = Field("polynomial", description="staleness function s(τ)")
    a: float = Field(0.5, ge=0, description="polynomial exponent / hinge slope")
    b: float = Field(4.0, ge=0, description="hinge threshold (versions)")


class FedAsyncStrategy(MergeStrategy):
    name = "fedasync"

    def __init__(self, alpha: float = 0.6, staleness: str = "polynomial", a: float = 0.5, b: float = 4.0):
        self.alpha, self.staleness, self.a, self.b = alpha, staleness, a, b

    def mixing_weight(self, tau: int) -> float:
        return self.alpha * float(staleness_weight(self.staleness, tau, self.a, self.b))

    def on_update(self, update, state: ServerState, ctx) -> ServerState:
        tau = staleness(update, state)
        alpha_t = self.mixing_weight(tau)
        self.merge(state, update, alpha_t)
        state.version += 1
        state.extra = {**state.extra, "alpha_t": alpha_t}
        return state

    def metrics(self, state: ServerState) -> dict[str, float]:
        return {"alpha_t": state.extra["alpha_t"]} if "alpha_t" in state.extra else {}


class FullModelClient(ClientAlgorithm):
    """Local training as usual; uploads the new trainable vector (``update.params``)."""

    upload_full_model = True


def _build(config, params: FedAsyncParams):
    strategy = FedAsyncStrategy(params.alpha, params.staleness, params.a, params.b)
    return strategy, FullModelClient(config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fedasync",
        summary="asynchronous: merge each arrival, x ← (1−α s(τ)) x + α s(τ) x_new",
        citation="Xie, Koyejo & Gupta, arXiv:1903.03934, 2019",
        build=_build,
        params=FedAsyncParams,
        modes=("async",),
    )
)
