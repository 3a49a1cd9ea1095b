"""FedNova — Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020.

Clients that take different numbers of local steps τ_i bias FedAvg towards the ones that
take more. FedNova normalises each client's update by a_i, the norm of its
local-aggregation vector:

    plain SGD:          a_i = τ_i
    SGD, momentum ρ:    a_i = [τ_i − ρ (1 − ρ^τ_i) / (1 − ρ)] / (1 − ρ)
    FedProx (μ, η):     a_i = [1 − (1 − η μ)^τ_i] / (η μ)

    d_i = −Δ_i / a_i                 (normalised update, Δ_i = w_i − w_g)
    τ_eff = Σ_i p_i a_i,  p_i = n_i / Σ_j n_j
    w_g ← w_g − η_g τ_eff Σ_i p_i d_i

η_g is ``method.server_lr`` (default 1). With equal τ_i FedNova equals FedAvg. Momentum
together with the proximal term, and Adam, have no closed-form a_i here and are refused.
"""

from __future__ import annotations

import torch

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.strategy import ServerState, Strategy, average_buffers, size_weights, stack_deltas
from .needs import MethodNeeds
from .payloads import PayloadSchema
from .registry import MethodInfo, register


def local_aggregation_norm(steps: int, momentum: float = 0.0, lr: float = 0.0, mu: float = 0.0) -> float:
    """a_i for a client that took ``steps`` local steps."""
    if mu > 0:
        return (1.0 - (1.0 - lr * mu) ** steps) / (lr * mu)
    if momentum > 0:
        return (steps - momentum * (1.0 - momentum**steps) / (1.0 - momentum)) / (1.0 - momentum)
    return float(steps)


class FedNovaStrategy(Strategy):
    name = "fednova"
    # a_k needs each client's number of local steps and the round's client learning rate
    needs = MethodNeeds(num_steps=True, round_lr=True)

    def __init__(self, server_lr: float, momentum: float, mu: float):
        self.server_lr, self.momentum, self.mu = server_lr, momentum, mu

    def aggregate(self, updates, state: ServerState, ctx) -> ServerState:
        if not updates:
            return state
        p = size_weights(updates)
        p = p / p.sum()
        a = torch.tensor(
            [local_aggregation_norm(u.num_steps, self.momentum, ctx.round_lr, self.mu) for u in updates],
            dtype=torch.float64,
        )
        tau_eff = float((p * a).sum())
        coeff = (self.server_lr * tau_eff * p / a).to(state.params.dtype)
        state.params = state.params + coeff @ stack_deltas(updates)
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state


def _build(config, params):
    c = config.client
    if c.optimizer != "sgd":
        raise ConfigError("FedNova normalises SGD updates; set client.optimizer=sgd.")
    mu = c.mu if c.objective == "prox" else 0.0
    if mu > 0 and c.momentum > 0:
        raise ConfigError("FedNova has no closed-form normaliser for momentum together with the proximal term; drop one.")
    server_lr = config.method.server_lr if config.method.server_lr is not None else 1.0
    return FedNovaStrategy(server_lr, c.momentum, mu), ClientAlgorithm(c.objective, c.mu)


METHOD = register(
    MethodInfo(
        name="fednova",
        summary="normalised averaging that removes the bias of unequal local steps",
        citation="Wang et al., NeurIPS 2020",
        build=_build,
        # a_k = τ_k (plain SGD) divides p_k: a client that took no step has no a_k
        payload_schema=PayloadSchema(min_steps=1, steps_why="FedNova divides each update by its local steps a_k"),
    )
)
