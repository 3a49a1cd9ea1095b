"""Ditto — Li, Hu, Beirami & Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021 (Algorithm 1).

Two models per client: the global model w, trained by any FedAvg-style solver, and a
personal model v_k regularised towards the global model of the round:

    global:    w_k ← local solver on F_k from w^t  (sent; the server averages as FedAvg)
    personal:  v_k ← v_k − η (∇F_k(v_k) + λ (v_k − w^t))     for s local steps
    objective: min_{v_k} F_k(v_k) + (λ/2) ‖v_k − w*‖²

``method.lam`` is λ (default 0.1) and ``method.personal_epochs`` the personal epochs s
(default: the same as ``client.epochs``; with ``client.local_steps`` the personal solver
takes that many steps). v_k lives in the client state (the shared trainable vector, plus the
float buffers if the model has any); it starts from the global model the client receives
on its first participation. :meth:`DittoClient.personalize` loads v_k for personalized
evaluation (``eval.personalized: true``); a client that never trained is scored with the
global model.

Decision — the proximal step. The paper's step above is explicit and diverges once
ηλ > 2. fedweave takes the proximal-gradient step instead,

    v ← (v − η ∇F_k(v) + ηλ w^t) / (1 + ηλ),

i.e. the gradient hook replaces g by (g + λ (v − w^t)) / (1 + ηλ). The two agree to first
order in ηλ (ηλ = 0.005 at the defaults), the step is stable for every λ, λ = 0 is local
training and λ → ∞ gives v_k = w^t exactly. The identity holds for plain SGD; with
momentum or Adam the hook is the same transformation of the gradient, an approximation.

The global part is a FedAvg preset (its stages stay overridable; ``client.objective: prox``
gives the paper's FedProx variant of the global solver). The personal steps are extra
local work that the simulator's virtual compute time does not charge
(``examples_processed`` reports them).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from pydantic import Field

from ..core.client import ClientAlgorithm
from .registry import MethodInfo, MethodParams, Preset, register


class DittoParams(MethodParams):
    lam: float = Field(0.1, ge=0, description="λ: weight of (λ/2)‖v − w‖² in the personal objective")
    personal_epochs: Optional[int] = Field(
        None, ge=1, description="epochs of the personal model per round (default: client.epochs)"
    )


def ditto_hook(global_params: torch.Tensor, lam: float, lr: float):
    """Proximal-gradient form of g + λ(v − w): (g + λ(v − w)) / (1 + ηλ)."""
    n = global_params.numel()
    scale = 1.0 / (1.0 + lr * lam)

    def hook(grad: torch.Tensor, trained: torch.Tensor) -> None:
        grad[:n].add_(trained[:n] - global_params, alpha=lam).mul_(scale)

    return hook


class DittoClient(ClientAlgorithm):
    stateful = True

    def __init__(self, lam: float, personal_epochs: int | None = None, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.lam = lam
        self.personal_epochs = personal_epochs

    def train(self, job, worker, generator):
        from ..train import local_train

        out = super().train(job, worker, generator)  # the global model's update (FedAvg / FedProx)
        model, state = worker.model, job.state or {}
        w = job.broadcast.params
        with torch.no_grad():
            model.params.copy_(state.get("v", w))
            if model.buffers.numel():
                model.buffers.copy_(state.get("v_buffers", job.broadcast.buffers))
        settings = job.settings
        if self.personal_epochs is not None:
            settings = replace(settings, epochs=self.personal_epochs, local_steps=None)
        idx = worker.data.client_train[job.client_id]
        result = local_train(model, worker.task, worker.data.x, worker.data.y, idx, settings, generator,
                             (ditto_hook(w, self.lam, settings.lr),))
        out.state = {**state, "v": model.params.clone(), "v_buffers": model.buffers.clone()}
        out.examples_processed += result.examples_processed
        return out

    @torch.no_grad()
    def personalize(self, model, broadcast, state, initial) -> None:
        super().personalize(model, broadcast, state, initial)
        if state and "v" in state:
            model.params.copy_(state["v"])
            if model.buffers.numel():
                model.buffers.copy_(state["v_buffers"])


def _client(config, params):
    return DittoClient(params.lam, params.personal_epochs, config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="ditto",
        summary="FedAvg global model + per-client personal model with (λ/2)‖v − w‖² (method.lam)",
        citation="Li et al., ICML 2021",
        preset=Preset(client=_client),
        params=DittoParams,
    )
)
