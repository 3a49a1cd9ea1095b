"""FedDisco — Ye et al., "FedDisco: Federated Learning with Discrepancy-Aware
Collaboration", ICML 2023 (official code: MediaBrain-SJTU/FedDisco).

Each client reports the class histogram of its training data (C numbers, counted in the
upload bytes). For the K clients of the cohort, with P_k the client's label distribution
and T the target distribution (uniform over the C classes, as in the paper's default):

    n_k = N_k / Σ_j N_j                              size share among the cohort
    d̃_k = D(P_k, T)                                  discrepancy, metric kl | l1 | l2
    d_k = d̃_k / Σ_j d̃_j   (d_k = 0 if all d̃_j = 0)  normalised over the cohort
    p_k = ReLU(n_k − a·d_k + b) / Σ_j ReLU(n_j − a·d_j + b)

    kl: KL(P_k ‖ T) = Σ_c P_kc log(P_kc / T_c)  (0 log 0 = 0);  l1: Σ_c |P_kc − T_c|;
    l2: ‖P_k − T‖₂.

Defaults a = 0.5, b = 0.1, metric kl (the official defaults). ``a`` must be ≥ 0 (a
negative a would reward discrepancy).

Where we follow the paper and where the code:
* The official code normalises d to sum 1 over the cohort only for ``kl``; with ``l1`` or
  ``l2`` the raw distances (up to 2 and √2) against a = 0.5 send most weights to 0. Here
  d is normalised **for every metric**, so a and b keep one meaning whatever the metric.
* All-zero fallback: when every ReLU(·) is 0 (possible with a large a or a negative b)
  the official code divides by zero; here the weights fall back to the size shares n_k
  (FedAvg), so the round still aggregates.
* The histogram is that of the client's training split as sent by the client (the code
  reads the server's copy of every client's full partition).

The client is unchanged otherwise: the weighting ``disco`` adds the histogram to any
client's upload, so it plugs into any staged method, e.g. ``method.name=fedprox
method.weighting=disco`` or with a server optimizer (``method.server_opt=adam``).
Method ``feddisco`` = FedAvg's stages with the weighting ``disco``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core.errors import ConfigError
from ..core.messages import Update
from .needs import MethodNeeds
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, Preset, register
from .stages import StageClient, register_weighting

HIST_KEY = "label_hist"


class DiscoParams(BaseModel):
    """Parameters of the ``disco`` weighting (``method.a``, ``method.b``, ``method.metric``)."""

    model_config = ConfigDict(extra="forbid")
    a: float = Field(0.5, ge=0, description="weight of the discrepancy d_k (a >= 0)")
    b: float = Field(0.1, description="offset added before the ReLU")
    metric: Literal["kl", "l1", "l2"] = Field("kl", description="discrepancy to the uniform target")


def discrepancy(hists: torch.Tensor, metric: str = "kl") -> torch.Tensor:
    """Raw discrepancy ``[K]`` between each row's label distribution and the uniform one."""
    hists = hists.to(torch.float64)
    totals = hists.sum(dim=1, keepdim=True)
    if bool((totals <= 0).any()):
        raise ValueError("every label histogram needs at least one example")
    p = hists / totals
    target = torch.full_like(p, 1.0 / p.shape[1])
    if metric == "kl":
        return torch.where(p > 0, p * torch.log(p / target), torch.zeros_like(p)).sum(dim=1)
    if metric == "l1":
        return (p - target).abs().sum(dim=1)
    if metric == "l2":
        return (p - target).norm(dim=1)
    raise ValueError(f"unknown discrepancy metric {metric!r}; allowed: kl, l1, l2")


def disco_weights(sizes: torch.Tensor, hists: torch.Tensor, a: float = 0.5, b: float = 0.1, metric: str = "kl") -> torch.Tensor:
    """FedDisco's aggregation weights ``[K]`` (sum 1); size shares when all would be 0."""
    sizes = sizes.to(torch.float64)
    n = sizes / sizes.sum()
    d = discrepancy(hists, metric)
    total = d.sum()
    d = d / total if total > 0 else torch.zeros_like(d)
    p = torch.relu(n - a * d + b)
    if not bool(p.sum() > 0):
        return n
    return p / p.sum()


class LabelHistogramClient(StageClient):
    """Adds the class histogram of the client's training split to its upload."""

    needs = MethodNeeds(upload=frozenset({HIST_KEY}))  # a payload entry, no other client logic

    def upload(self, job, worker, update, state):
        data = worker.data
        labels = data.labels[data.client_train[job.client_id]]
        hist = torch.bincount(labels, minlength=data.num_classes).to(torch.float32)
        return {HIST_KEY: hist}, None


class DiscoWeighting:
    """The ``disco`` weighting stage (configured from ``method.a/b/metric``)."""

    # the label histogram: one non-negative count per class, whichever preset uses the stage
    payload_schema = PayloadSchema((Entry(HIST_KEY, ("classes",), minimum=0.0, what="the client's label histogram"),))

    def __init__(self, params: DiscoParams):
        self.a, self.b, self.metric = params.a, params.b, params.metric
        self.client = LabelHistogramClient()

    def __call__(self, updates: list[Update], state, ctx) -> torch.Tensor:
        missing = [u.client_id for u in updates if HIST_KEY not in u.payload]
        if missing:
            raise ConfigError(f"The 'disco' weighting needs each client's label histogram; clients {missing} sent none.")
        sizes = torch.tensor([float(u.num_examples) for u in updates], dtype=torch.float64)
        hists = torch.stack([u.payload[HIST_KEY] for u in updates])
        return disco_weights(sizes, hists, self.a, self.b, self.metric)


def _make_disco(config, params: DiscoParams) -> DiscoWeighting:
    return DiscoWeighting(params)


register_weighting(
    "disco",
    _make_disco,
    "FedDisco: ReLU(n_k - a d_k + b), d_k = label-histogram discrepancy (method.a, method.b, method.metric)",
    params=DiscoParams,
)

METHOD = register(
    MethodInfo(
        name="feddisco",
        summary="discrepancy-aware weights ReLU(n_k - a d_k + b) from client label histograms",
        citation="Ye et al., ICML 2023",
        preset=Preset(weighting="disco", combiner="mean", server_opt="replace"),
    )
)
