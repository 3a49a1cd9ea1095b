"""FLTrust — Cao, Fang, Liu & Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS 2021.

The server holds a small clean *root dataset* — here the foundation's server-held split
(``data.server_fraction`` > 0, class-balanced, disjoint from clients and test). Each round:

1. the server trains a copy of the global model on the root dataset with the clients'
   local-training settings and the round's learning rate, for as many local steps as the
   median client of the round took (``method.root_steps`` overrides; the paper uses the
   same number of local iterations as the clients), giving the server update g₀;
2. trust score of client i: ``TS_i = ReLU(cos(Δ_i, g₀))``;
3. each update is rescaled to the server update's norm, ``Δ̄_i = (‖g₀‖/‖Δ_i‖) Δ_i``;
4. ``g = Σ_i TS_i Δ̄_i / Σ_i TS_i`` (zero when every score is 0), and
   ``w_g ← w_g + η g`` with η = ``method.server_lr`` (default 1).

The root-set training draws its batches from ``(seed, "fltrust-root", round)``. Float buffers
get the plain example-weighted mean. ``fltrust_mean_trust`` (the mean trust score of the
last round) is reported with each evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
from pydantic import Field

from ..aggregate import cosine_similarity_rows
from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.params import FlatModel
from ..core.rng import torch_generator
from ..core.strategy import ServerState, Strategy, average_buffers, stack_deltas
from .needs import MethodNeeds
from .registry import MethodInfo, MethodParams, register


class FLTrustParams(MethodParams):
    root_steps: Optional[int] = Field(None, ge=1, description="server local steps on the root set (default: the median client's)")


def fltrust_combine(deltas: torch.Tensor, server_update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLTrust's aggregate ``[P]`` of ``deltas`` ``[K, P]`` given g₀, and the trust scores ``[K]``."""
    trust = torch.relu(cosine_similarity_rows(deltas, server_update))
    g0_norm = torch.linalg.vector_norm(server_update)
    norms = torch.linalg.vector_norm(deltas, dim=1).clamp_min(1e-12)
    total = trust.sum()
    if float(total) <= 0:
        return torch.zeros_like(server_update), trust
    scaled = deltas * (g0_norm / norms)[:, None]
    return (trust / total).to(deltas.dtype) @ scaled, trust


class FLTrustStrategy(Strategy):
    name = "fltrust"

    def __init__(self, server_lr: float = 1.0, root_steps: int | None = None):
        self.server_lr = server_lr
        self.root_steps = root_steps
        self._trainer = None  # (FlatModel, task, settings_fn), attached by setup_fltrust

    def attach(self, model_factory, roles, task, settings_fn) -> None:
        self._trainer = (model_factory, roles, task, settings_fn)
        self._model: FlatModel | None = None

    def server_update(self, state: ServerState, ctx, steps: int) -> torch.Tensor:
        from ..train import local_train

        if self._trainer is None:
            raise RuntimeError("FLTrustStrategy needs attach() before aggregating (done by build_experiment).")
        factory, roles, task, settings_fn = self._trainer
        if self._model is None:
            self._model = FlatModel(factory(), roles)
        m = self._model
        with torch.no_grad():
            m.params.copy_(state.params)
            if m.buffers.numel():
                m.buffers.copy_(state.buffers)
        x, y = ctx.server_data
        settings = dataclasses.replace(settings_fn(ctx.round_lr), local_steps=steps, epochs=None)
        local_train(m, task, x, y, torch.arange(len(y)), settings, torch_generator(ctx.seed, "fltrust-root", state.round))
        return m.params - state.params

    def aggregate(self, updates, state, ctx) -> ServerState:
        if not updates:
            return state
        steps = self.root_steps or max(1, int(np.median([u.num_steps for u in updates])))
        g0 = self.server_update(state, ctx, steps)
        combined, trust = fltrust_combine(stack_deltas(updates), g0)
        state.params = state.params + self.server_lr * combined
        state.buffers = average_buffers(updates, state)
        state.extra["fltrust_mean_trust"] = float(trust.mean())
        state.version += 1
        return state

    def metrics(self, state) -> dict:
        v = state.extra.get("fltrust_mean_trust")
        return {} if v is None else {"fltrust_mean_trust": v}


def _build(config, params: FLTrustParams):
    if config.data.server_fraction <= 0:
        raise ConfigError(
            "FLTrust needs a root dataset held by the server: set data.server_fraction (e.g. 0.02; the paper uses 100 examples)."
        )
    server_lr = config.method.server_lr if config.method.server_lr is not None else 1.0
    return FLTrustStrategy(server_lr, params.root_steps), ClientAlgorithm(config.client.objective, config.client.mu)


def setup_fltrust(exp) -> None:
    """Set-up: give FLTrust's server the model and the training settings for its root set
    (the method's own set-up runs before privacy or attacks wrap the strategy)."""
    exp.strategy.attach(exp.model_factory, exp.roles, exp.task, exp.train_settings)


METHOD = register(
    MethodInfo(
        name="fltrust",
        summary="trust scores from a server root dataset (ReLU-cosine), norm-equalised weighted mean",
        citation="Cao et al., NDSS 2021",
        build=_build,
        params=FLTrustParams,
        setup=setup_fltrust,
        # the server trains on its root set with fedweave's trainer (Flower's adapter cannot)
        needs=MethodNeeds(server_training=True),
    )
)
