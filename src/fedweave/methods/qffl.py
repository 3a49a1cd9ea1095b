"""q-FFL / q-FedAvg — Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in
Federated Learning", ICLR 2020 (official code: litian96/fair_flearn, ``qffedavg``).

q-FFL minimises Σ_k p_k F_k^{q+1} / (q+1): the larger q, the more weight on the clients
with high loss, so performance spreads less across clients. q-FedAvg, its federated
solver, runs plain local SGD and replaces FedAvg's server step. With L = 1/η (η the
client learning rate of the round, an estimate of the Lipschitz constant of ∇F_k):

    Δw_k = L (w_g − w_k) = −L Δ_k                 (Δ_k = w_k − w_g, the client's delta)
    h_k  = q F_k^{q−1} ‖Δw_k‖² + L F_k^q
    w_g ← w_g − Σ_k F_k^q Δw_k / Σ_k h_k

F_k is the loss of the **global** model on client k's training data, computed by the
client before local training (a forward pass over its training split, in eval mode) and
sent as one scalar (``qffl_loss``, 8 bytes); as in the code, F_k + 1e-10 is used so that
F_k^{q−1} stays finite. q = 0 gives h_k = L and w_g ← w_g + (1/K) Σ_k Δ_k: the
*uniform* average of the client models (the paper pairs this with clients sampled in
proportion to their size, ``schedule.sampling: weighted``, which makes it unbiased FedAvg).
``method.q`` ≥ 0 (default 1). L = 1/η assumes plain SGD steps; with momentum or Adam it
is only a heuristic scale.

Equivalently w_g ← w_g + Σ_k a_k Δ_k with a_k = L F_k^q / Σ_j h_j. Σ_k a_k, the step
length relative to averaging the client models, is reported as ``qffl_step_scale`` in
every evaluation record, beside ``qffl_mean_local_steps`` (the mean local steps of the
round's updates): for q > 0 the term q F^{q−1} L² ‖Δ_k‖² of h_k makes it small
when clients move far (many local steps), so q-FedAvg then progresses much more slowly
than FedAvg; that is the method's maths (the official code computes the same h_k), not a
bug. The extra forward pass is not charged to the device's compute
time (a forward pass costs about a third of a training step).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.strategy import ServerState, Strategy, average_buffers, stack_deltas
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, MethodParams, register

LOSS_KEY = "qffl_loss"
LOSS_EPS = 1e-10


def qffl_coefficients(deltas: torch.Tensor, losses: torch.Tensor, q: float, lr: float) -> torch.Tensor:
    """a ``[K]`` with w_g ← w_g + Σ_k a_k Δ_k, a_k = L F_k^q / Σ_j h_j (a_k = 1/K for q = 0)."""
    big_l = 1.0 / lr
    f = losses.to(torch.float64).clamp_min(0.0) + LOSS_EPS
    sq = big_l**2 * (deltas.to(torch.float64) ** 2).sum(dim=1)  # ‖Δw_k‖² = L² ‖Δ_k‖²
    h = q * f.pow(q - 1) * sq + big_l * f.pow(q)
    return big_l * f.pow(q) / h.sum()


def qffl_step(global_params: torch.Tensor, deltas: torch.Tensor, losses: torch.Tensor, q: float, lr: float) -> torch.Tensor:
    """The new global model of q-FedAvg from client deltas ``[K, P]`` and global-model losses ``[K]``.

    w_g − Σ_k F_k^q Δw_k / Σ_k h_k with Δw_k = −L Δ_k, i.e. w_g + Σ_k a_k Δ_k."""
    a = qffl_coefficients(deltas, losses, q, lr)
    return (global_params.to(torch.float64) + a @ deltas.to(torch.float64)).to(global_params.dtype)


class QFFLStrategy(Strategy):
    name = "qffl"

    def __init__(self, q: float):
        self.q = q

    def aggregate(self, updates, state: ServerState, ctx) -> ServerState:
        if not updates:
            return state
        missing = [u.client_id for u in updates if LOSS_KEY not in u.payload]
        if missing:
            raise ConfigError(f"q-FFL needs each client's global-model loss; clients {missing} sent none.")
        losses = torch.tensor([float(u.payload[LOSS_KEY]) for u in updates], dtype=torch.float64)
        deltas = stack_deltas(updates)
        a = qffl_coefficients(deltas, losses, self.q, ctx.round_lr)
        state.params = (state.params.to(torch.float64) + a @ deltas.to(torch.float64)).to(state.params.dtype)
        state.extra["qffl_step_scale"] = float(a.sum())
        # the step scale shrinks with how far clients move, i.e. with their local steps
        state.extra["qffl_mean_local_steps"] = sum(u.num_steps for u in updates) / len(updates)
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state

    def metrics(self, state) -> dict:
        # Σ_k a_k: the length of the step relative to averaging the client models (1)
        return {"qffl_step_scale": state.extra.get("qffl_step_scale"),
                "qffl_mean_local_steps": state.extra.get("qffl_mean_local_steps")}


class QFFLClient(ClientAlgorithm):
    """Measures F_k, the global model's loss on its training split, then trains as usual."""

    def train(self, job, worker, generator):
        idx = worker.data.client_train[job.client_id]
        loss = float("nan")
        if len(idx):
            loss = worker.task.evaluate(worker.model.module, worker.data.x[idx], worker.data.y[idx])["loss"]
        out = super().train(job, worker, generator)
        out.update.payload[LOSS_KEY] = float(loss)
        return out


class QFFLParams(MethodParams):
    q: float = Field(1.0, ge=0, description="fairness exponent q >= 0 (0: uniform averaging)")


def _build(config, params: QFFLParams):
    return QFFLStrategy(params.q), QFFLClient(config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="qffl",
        summary="q-FedAvg: fair aggregation that up-weights clients with high loss (method.q)",
        citation="Li et al., ICLR 2020",
        build=_build,
        params=QFFLParams,
        # F_k enters as F_k^q and F_k^(q-1): a finite, non-negative loss
        payload_schema=PayloadSchema((Entry(LOSS_KEY, minimum=0.0, what="the global model's loss on the client"),)),
    )
)
