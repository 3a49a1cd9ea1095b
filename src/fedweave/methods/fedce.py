"""FedCE — Jiang et al., "Fair Federated Medical Image Segmentation via Client
Contribution Estimation", CVPR 2023 (official code: NVIDIA/NVFlare ``research/fed-ce``,
components in ``nvflare/app_opt/pt/fedce.py``).

FedCE estimates each client's contribution in two spaces and aggregates with the
estimates. With c_j the contributions used in the previous aggregation (uniform 1/N
before the first), in every round t:

Gradient space (server)::

    g     = Σ_j c_j Δ_j                g_−k = g − c_k Δ_k
    s_k^t = cos(Δ_k, g_−k)             (0 when either vector is zero)
    G_k   = max(0, 1 − mean_{τ ≤ t} s_k^τ)

Data space (client)::

    θ_−k  = (θ − c_k θ_k^prev) / (1 − c_k)      the global model without client k
    m_k^τ = score of θ_−k on client k's validation split   (accuracy here; Dice in the paper)
    M_k   = 1 − mean_τ m_k^τ

Contributions and aggregation::

    c = normalise(normalise(G) + normalise(M)),  normalise(v) = max(v, ε) / Σ max(v, ε)
    w_g ← w_g + Σ_k c_k Δ_k                       (= Σ_k c_k w_k, since Σ c = 1)

θ is the global model the client receives, θ_k^prev the model the client trained in the
previous round (kept in the client-state store, so the state is one model per client) and
c_k the weight that model received; θ_−k is then exactly the weighted average of the other
clients' previous models. The server broadcasts c_k to each client (one scalar) and each
client returns M_k (one scalar). In its first round a client has no previous model and
no score, and reports M_k = 1 (so M is uniform in round 1, as in the code).

Decisions, and where they follow the paper or the code:
* Full participation is required, as both assume: the weighting refuses configs where not
  every client takes part every round (``schedule.clients_per_round`` must equal the number
  of clients, ``schedule.sampling: uniform``, ``schedule.mode: sync``). A round that still
  lacks clients at run time (a client dead in a deployment, a dropout profile) is not an
  error — no single client may stop a run: it logs a warning and scores the clients present
  among themselves (the prior c renormalised over them, their new c summing to 1), and the
  missing keep their last c (ours; neither the paper nor the code meets this case).
* 1 − c_k → 0 guard: the denominator is max(1 − c_k, ``min_denominator``) (1e-3). When
  c_k ≈ 1 the others contributed almost nothing, the guarded minus model is poor and its
  low score keeps M_k high, consistent with c_k ≈ 1.
* ε = ``epsilon`` (1e-3, as in METHODS.md; the NVFlare code uses 1e-6); ``mode: plus``
  (default) or ``times`` (c ∝ normalise(G)·normalise(M)), as the code offers.
* The mean of the minus-model scores runs over the rounds that had a minus model; the
  code also counts its first round as a score of 0.
* The score is the task's per-example score averaged over the validation split, so M_k is
  defined for scores in [0, 1]: the weighting is for classification only.
* The minus model uses the received global buffers (BatchNorm statistics), and the
  gradient-space cosines use the shared trainable parameters only. With a server optimizer
  other than ``replace`` or another combiner, θ is not Σ c_k θ_k and θ_−k is an
  approximation.

Every evaluation record carries ``fedce_contribution`` (c, one entry per client), and the
two components ``fedce_gradient`` (G) and ``fedce_data`` (M).

:func:`fedweave.contributions.leave_one_out` retrains the federation without each client
in turn (opt-in, N + 1 runs) and :func:`pearson` correlates its contributions with FedCE's
estimates.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core.errors import ConfigError
from ..core.strategy import stack_deltas
from .fedlaw import named_tensors
from .needs import MethodNeeds
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, Preset, register
from .stages import StageClient, register_weighting

log = logging.getLogger(__name__)

C_KEY = "fedce_c"  # downlink: the contribution c_k of the previous aggregation
M_KEY = "fedce_m"  # uplink: the client's data-space contribution M_k


class FedCEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epsilon: float = Field(1e-3, gt=0, lt=1, description="floor of each normalised component")
    mode: Literal["plus", "times"] = Field("plus", description="combine G and M by sum (paper) or product")
    min_denominator: float = Field(1e-3, gt=0, le=1, description="guard of 1 - c_k in the minus model")


def normalise(v: torch.Tensor, eps: float) -> torch.Tensor:
    v = v.to(torch.float64).clamp_min(eps)
    return v / v.sum()


def combine_contributions(g: torch.Tensor, m: torch.Tensor, eps: float = 1e-3, mode: str = "plus") -> torch.Tensor:
    """c = normalise(normalise(G) ⊕ normalise(M)), ⊕ = + (plus) or × (times)."""
    gn, mn = normalise(g, eps), normalise(m, eps)
    return normalise(gn + mn if mode == "plus" else gn * mn, eps)


def leave_others_cosines(deltas: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """s_k = cos(Δ_k, Σ_j c_j Δ_j − c_k Δ_k) for every k (0 where a norm is 0)."""
    d = deltas.to(torch.float64)
    c = prior.to(torch.float64)
    consensus = c @ d
    others = consensus.unsqueeze(0) - c.unsqueeze(1) * d
    norms = d.norm(dim=1) * others.norm(dim=1)
    dots = (d * others).sum(dim=1)
    return torch.where(norms > 0, dots / norms.clamp_min(1e-300), torch.zeros_like(dots))


def minus_model(global_params: torch.Tensor, previous: torch.Tensor, c: float, min_denominator: float = 1e-3) -> torch.Tensor:
    """θ_−k = (θ − c_k θ_k^prev) / max(1 − c_k, min_denominator)."""
    return (global_params - c * previous) / max(1.0 - c, min_denominator)


class FedCEClient(StageClient):
    """Scores the minus model on the client's validation split; keeps its trained model."""

    stateful = True

    def __init__(self, min_denominator: float):
        self.min_denominator = min_denominator

    @torch.no_grad()
    def _score(self, worker, params: torch.Tensor, buffers: torch.Tensor, idx: torch.Tensor) -> float:
        from torch.func import functional_call

        module, data = worker.model.module, worker.data
        was_training = module.training
        module.eval()
        try:
            tensors = named_tensors(worker.model.spec, params, buffers)
            scores = []
            for start in range(0, len(idx), 2048):
                b = idx[start : start + 2048]
                scores.append(worker.task.per_example_score(functional_call(module, tensors, (data.x[b],)), data.y[b]))
            return float(torch.cat(scores).mean())
        finally:
            module.train(was_training)

    def upload(self, job, worker, update, state):
        state = state or {}
        total, count = float(state.get("fedce_score_sum", 0.0)), int(state.get("fedce_score_count", 0))
        previous = state.get("fedce_prev")
        val = worker.data.client_val[job.client_id]
        if previous is not None and len(val):
            c = float(job.broadcast.payload[C_KEY])
            theta = minus_model(job.broadcast.params, previous, c, self.min_denominator)
            total += self._score(worker, theta, job.broadcast.buffers, val)
            count += 1
        m = 1.0 - total / count if count else 1.0
        entries = {
            "fedce_prev": job.broadcast.params + update.delta,
            "fedce_score_sum": total,
            "fedce_score_count": count,
        }
        return {M_KEY: m}, entries


class FedCEWeighting:
    """The ``fedce`` weighting stage (state in ``state.extra``, contributions in metrics)."""

    # M_k = 1 − mean validation score, scores in [0, 1]
    payload_schema = PayloadSchema((Entry(M_KEY, minimum=0.0, maximum=1.0, what="the client's data-space contribution M_k"),))

    def __init__(self, params: FedCEParams):
        self.p = params
        self.client = FedCEClient(params.min_denominator)

    def init(self, state, ctx) -> None:
        n = ctx.num_clients
        state.extra["fedce_c"] = torch.full((n,), 1.0 / n, dtype=torch.float64)
        state.extra["fedce_cos_sum"] = torch.zeros(n, dtype=torch.float64)
        state.extra["fedce_cos_count"] = torch.zeros(n, dtype=torch.float64)
        state.extra["fedce_G"] = torch.zeros(n, dtype=torch.float64)
        state.extra["fedce_M"] = torch.zeros(n, dtype=torch.float64)

    def broadcast_payload(self, client_id: int, state, ctx) -> dict[str, Any]:
        return {C_KEY: float(state.extra["fedce_c"][client_id])}

    def __call__(self, updates, state, ctx) -> torch.Tensor:
        ids = [u.client_id for u in updates]
        idx = torch.tensor(ids)
        ex = state.extra
        prior = ex["fedce_c"][idx]
        if sorted(ids) != list(range(ctx.num_clients)):
            # a round without some clients (a dead client in a deployment, a dropout profile):
            # the clients present are scored among themselves; the missing keep their last c
            missing = sorted(set(range(ctx.num_clients)) - set(ids))
            log.warning("FedCE: round %d lacks clients %s; scoring the %d present among themselves",
                        state.round + 1, missing, len(ids))
            prior = prior / prior.sum()
        s = leave_others_cosines(stack_deltas(updates), prior)
        ex["fedce_cos_sum"][idx] += s
        ex["fedce_cos_count"][idx] += 1
        g = (1.0 - ex["fedce_cos_sum"][idx] / ex["fedce_cos_count"][idx]).clamp_min(0.0)
        m = torch.tensor([float(u.payload[M_KEY]) for u in updates], dtype=torch.float64)
        c = combine_contributions(g, m, self.p.epsilon, self.p.mode)
        ex["fedce_c"][idx] = c
        ex["fedce_G"][idx] = g
        ex["fedce_M"][idx] = m
        return c

    def metrics(self, state) -> dict:
        ex = state.extra
        return {
            "fedce_contribution": [float(v) for v in ex["fedce_c"]],
            "fedce_gradient": [float(v) for v in ex["fedce_G"]],
            "fedce_data": [float(v) for v in ex["fedce_M"]],
        }


def _make_fedce(config, params: FedCEParams) -> FedCEWeighting:
    if config is not None:
        s, p = config.schedule, config.data.partition
        full = s.sampling == "uniform" and (p.kind == "natural" or s.clients_per_round == p.num_clients)
        if s.mode != "sync" or not full:
            raise ConfigError(
                "FedCE assumes that every client takes part in every round: its gradient-space score compares each "
                "client's update with all the others', and each client's minus model needs the model it trained in "
                "the previous round. Set schedule.mode: sync, schedule.sampling: uniform and "
                f"schedule.clients_per_round = data.partition.num_clients ({p.num_clients})."
            )
        if config.data.client_val_fraction <= 0:
            raise ConfigError(
                "FedCE's data-space score evaluates the minus model on each client's validation split, and "
                "data.client_val_fraction is 0; set it (e.g. 0.1)."
            )
        if config.task.kind != "classification":
            raise ConfigError(
                f"FedCE's data-space score M_k = 1 - mean score needs a score in [0, 1] (accuracy); task.kind "
                f"{config.task.kind!r} has none. Use it with task.kind: classification."
            )
    return FedCEWeighting(params)


register_weighting(
    "fedce",
    _make_fedce,
    "FedCE: contribution estimates from gradient-space (cosine) and data-space (minus-model) scores; full participation",
    params=FedCEParams,
)

METHOD = register(
    MethodInfo(
        name="fedce",
        summary="aggregation by estimated client contributions (gradient + data space); reports them every round",
        citation="Jiang et al., CVPR 2023",
        preset=Preset(weighting="fedce", combiner="mean", server_opt="replace"),
        # declared, not only derived: the build checks fedweave's own schedule and data
        # settings, so a runner that cannot provide these must know before building
        needs=MethodNeeds(broadcast="each client's contribution score is sent to it",
                          client_logic="each client scores the model on its validation split"),
    )
)


# -- comparing with leave-one-out contributions (fedweave.contributions.leave_one_out) -------


def pearson(a, b) -> float:
    """Pearson correlation of two equal-length sequences (nan if either is constant)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("pearson needs two sequences of the same length >= 2")
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")
