"""FedBuff — Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek & Huba, "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1.

Clients train asynchronously (``schedule.mode: buffered``); the server keeps a buffer
of K = ``schedule.buffer_size`` arrivals and, when it is full, applies

    Δ̄ = (1/K) Σ_k s(τ_k) Δ_k,     s(τ) = (1 + τ)^(−a)   (a = 0.5 by default)
    w_g, m ← server_opt.step(w_g, Δ̄)                   (heavy-ball SGD, lr η_g, momentum β)

with Δ_k = w_k − w_base the client's delta from the version it trained on and τ_k its
staleness when it arrived (aggregate.staleness.staleness, τ = version − base_version:
every arrival in one buffer is measured against the same global version, the one the
buffer is applied to). The server step is fedweave's ``sgd`` server optimizer
(FedAvgM's heavy ball, :mod:`fedweave.aggregate.server_opt`): ``m ← β m − Δ̄;
w_g ← w_g − η_g m``; with ``method.server_lr = 1`` and ``method.server_momentum = 0``
(the defaults) this is ``w_g ← w_g + Δ̄``.

Decisions:

* The mean is uniform (1/K), as in the paper, not weighted by client size: FedBuff
  equals FedAvg only with K = the cohort, no staleness, equal client sizes and η_g = 1.
* The staleness function is selectable (``method.staleness``: polynomial by default,
  constant or hinge; ``method.a``, ``method.b`` as in :mod:`fedweave.methods.fedasync`).
* Float buffers (BatchNorm statistics) get the example-weighted mean of the buffer.
* The engine merges full buffers only; a partial buffer left when the budget ends is
  discarded.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field

from ..aggregate import make_server_optimizer
from ..aggregate.staleness import staleness, staleness_weight
from ..core.client import ClientAlgorithm
from ..core.strategy import ServerState, Strategy, average_buffers, stack_deltas
from .registry import MethodInfo, MethodParams, register


class FedBuffParams(MethodParams):
    staleness: Literal["constant", "polynomial", "hinge"] = Field("polynomial", description="staleness function s(τ)")
    a: float = Field(0.5, ge=0, description="polynomial exponent (FedBuff: 0.5) / hinge slope")
    b: float = Field(4.0, ge=0, description="hinge threshold (versions)")


class FedBuffStrategy(Strategy):
    name = "fedbuff"
    modes = ("buffered",)

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.0, staleness: str = "polynomial",
                 a: float = 0.5, b: float = 4.0):
        self.opt = make_server_optimizer("sgd", lr=server_lr, momentum=server_momentum)
        self.staleness, self.a, self.b = staleness, a, b

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        state.extra["opt"] = self.opt.init(state.params)
        return state

    def weights(self, updates, state: ServerState) -> torch.Tensor:
        """s(τ_k) / K for every update of the buffer."""
        taus = [staleness(u, state) for u in updates]
        s = torch.tensor([float(staleness_weight(self.staleness, t, self.a, self.b)) for t in taus], dtype=torch.float64)
        return s / len(updates)

    def aggregate(self, updates, state: ServerState, ctx) -> ServerState:
        if not updates:
            return state
        w = self.weights(updates, state)
        deltas = stack_deltas(updates)
        d = w.to(deltas.dtype) @ deltas
        state.params, opt_state = self.opt.step(state.params, d, state.extra["opt"])
        state.buffers = average_buffers(updates, state)
        state.version += 1
        state.extra = {**state.extra, "opt": opt_state, "staleness_weight_mean": float(w.sum())}
        return state

    def metrics(self, state: ServerState) -> dict[str, float]:
        v = state.extra.get("staleness_weight_mean")
        return {} if v is None else {"staleness_weight_mean": v}


def _build(config, params: FedBuffParams):
    m = config.method
    lr: Optional[float] = m.server_lr
    momentum = m.server_momentum
    strategy = FedBuffStrategy(1.0 if lr is None else lr, 0.0 if momentum is None else momentum,
                               params.staleness, params.a, params.b)
    return strategy, ClientAlgorithm(config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fedbuff",
        summary="buffered async: every K arrivals, w ← w + η (1/K) Σ s(τ) Δ (server momentum optional)",
        citation="Nguyen et al., AISTATS 2022",
        build=_build,
        params=FedBuffParams,
        modes=("buffered",),
        stage_keys=("server_momentum",),
    )
)
