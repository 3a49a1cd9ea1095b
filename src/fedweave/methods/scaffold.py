"""SCAFFOLD — Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning", ICML 2020 (Algorithm 1, control-variate **option II**).

Server state: the global model x and control variate c. Client i keeps c_i (zero at
first) in the client-state store. With local learning rate η and K local steps:

    client:  y ← y − η (g_i(y) − c_i + c)                       (every step)
             c_i⁺ = c_i − c + (x − y) / (K η)                     (option II)
             sends Δy_i = y − x and Δc_i = c_i⁺ − c_i
    server:  x ← x + η_g · (1/|S|) Σ_{i∈S} Δy_i
             c ← c + (|S| / N) · (1/|S|) Σ_{i∈S} Δc_i

Both means are uniform over the cohort S, as in the paper; N is the number of clients
and η_g is ``method.server_lr`` (default 1). Option II reuses the local steps and costs
no extra gradient computation, which is why it is the common default. The control
variates cover the shared trainable vector only (not personal segments). The local
optimizer must be SGD (option II's c_i⁺ assumes plain gradient steps); with momentum
the correction is added to the gradient before the momentum buffer, an approximation.
The uplink and downlink carry one extra model-sized vector each, counted in bytes.
"""

from __future__ import annotations

import torch

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.strategy import ServerState, Strategy, average_buffers, stack_deltas
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, register


class ScaffoldStrategy(Strategy):
    name = "scaffold"

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = server_lr

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        state.extra["c"] = torch.zeros_like(state.params)
        return state

    def broadcast_payload(self, state, ctx):
        return {"c": state.extra["c"]}

    def aggregate(self, updates, state, ctx) -> ServerState:
        if not updates:
            return state
        state.params = state.params + self.server_lr * stack_deltas(updates).mean(dim=0)
        delta_c = torch.stack([u.payload["delta_c"] for u in updates]).mean(dim=0)
        state.extra["c"] = state.extra["c"] + (len(updates) / ctx.num_clients) * delta_c
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state


class ScaffoldClient(ClientAlgorithm):
    stateful = True

    def _client_c(self, job) -> torch.Tensor:
        state = job.state or {}
        return state.get("c_i", torch.zeros_like(job.broadcast.params))

    def grad_hooks(self, job, worker):
        correction = job.broadcast.payload["c"] - self._client_c(job)
        n = correction.numel()

        def hook(grad, trained):
            grad[:n].add_(correction)

        return super().grad_hooks(job, worker) + (hook,)

    def train(self, job, worker, generator):
        out = super().train(job, worker, generator)
        c_i, c = self._client_c(job), job.broadcast.payload["c"]
        steps = max(out.update.num_steps, 1)
        c_new = c_i - c - out.update.delta / (steps * job.settings.lr)  # option II; delta = y − x
        out.update.payload["delta_c"] = c_new - c_i
        out.state = {**(job.state or {}), "c_i": c_new}
        return out


def _build(config, params):
    if config.client.optimizer != "sgd":
        raise ConfigError("SCAFFOLD's control variates (option II) assume SGD local steps; set client.optimizer=sgd.")
    server_lr = config.method.server_lr if config.method.server_lr is not None else 1.0
    return ScaffoldStrategy(server_lr), ScaffoldClient(config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="scaffold",
        summary="control variates correct client drift (option II); method.server_lr = global step",
        citation="Karimireddy et al., ICML 2020",
        build=_build,
        stage_keys=(),
        # Δc_i = c_i⁺ − c_i, averaged into c: a vector like the trainable one
        payload_schema=PayloadSchema((Entry("delta_c", ("params",), what="SCAFFOLD's control-variate change"),)),
    )
)

