"""FSAR on graph-convolutional models — Guo, Liu, Sun, Guo, Zhang & Si, "FSAR: Federated
Skeleton-based Action Recognition with Adaptive Topology Structure and Knowledge
Distillation", ICCV 2023 (arXiv 2306.11046). No official code was found; the paper's body
was not readable here, so what follows is the abstract's two mechanisms made precise on a
GCN, and every default below is ours unless marked otherwise.

The general, model-agnostic form is method ``fsar`` (a personal head instead of a personal
topology). This one needs a model whose graph adjacency is split into learnable parts,
as ``stgcn`` (:mod:`fedweave.tasks.skeleton`) is: in every graph convolution

    A_i^{(l)} = Â + S^{(l)} + P_i^{(l)}

**Adaptive Topology Structure (ATS).** S^{(l)} (parameters ``*.topology_shared``) is the
domain-invariant topology: trained on every client and aggregated with everything else
that is shared (FedAvg, example-weighted). P_i^{(l)} (``*.topology_specific``) is client
i's domain-specific topology, "decoupled from global model aggregation" (the paper's
words): it has the role ``personal`` — trained on the client, kept in its client state,
never uploaded. Â is the fixed physical prior. The server's model is Â + S (P = 0, the
value P starts from): the "globally generalized model" the test set scores. With
``eval.personalized: true`` each client is also scored with its own P_i.

**Multi-grain Knowledge Distillation (MKD).** The client's loss aligns the *motion*
features (temporal differences) of the shallow blocks of the local model with those of the
server model received this round (frozen teacher, stop-gradient):

    L_i = CE(f_i(x), y) + β · (1/|B|) Σ_{b ∈ B} Σ_{g ∈ G} MSE(g(φ_b^i(x)), sg[g(φ_b^s(x))])

    φ_b: output [N, C, T, V] of block b;  B = ``method.distill_layers`` (default the
    model's ``shallow_blocks``: the first two of stgcn's three blocks — ours)
    grains G (``method.grains``, default [motion, joint] — ours): motion g(φ) = φ[:, :, 1:] − φ[:, :, :−1]
    (the frame-to-frame change the abstract names "motion features"); joint g(φ) = φ
    (the per-joint features); body g(φ) = mean over joints.

β = ``method.beta`` (default 1.0, ours). Block-wise over several shallow blocks and grains
is our reading of "multi-grain ... shallow block-wise"; the paper's exact grains and
weights could not be checked. The teacher's forward pass is extra local work the virtual
clock does not charge.
"""

from __future__ import annotations

import fnmatch
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.client import ClientAlgorithm, JobResult
from ..core.errors import ConfigError
from .distill import teacher_model, train_distilling
from .registry import MethodInfo, MethodParams, Preset, register

SHARED_TOPOLOGY = "*topology_shared"
SPECIFIC_TOPOLOGY = "*topology_specific"
Grain = Literal["motion", "joint", "body"]


class FSARGCNParams(MethodParams):
    beta: float = Field(1.0, ge=0, description="β: weight of the multi-grain distillation loss (ours)")
    grains: list[Grain] = Field(["motion", "joint"], min_length=1,
                                description="feature grains distilled: motion (temporal difference), joint, body")
    distill_layers: Optional[list[str]] = Field(
        None, description="blocks whose outputs are distilled (default: the model's shallow_blocks)"
    )


def _no_topology(module) -> ConfigError:
    return ConfigError(
        f"Method 'fsar_gcn' splits a graph model's adjacency into a shared (aggregated) and a client-specific "
        f"(kept local) topology, but this model ({type(module).__name__}) has no graph adjacency parameters: it needs "
        f"parameters named '{SHARED_TOPOLOGY}' and '{SPECIFIC_TOPOLOGY}' (model.name: stgcn has them). For a model "
        "without a graph use method 'fsar' (the general form, with a personal head)."
    )


def distill_layers(params: FSARGCNParams, module) -> list[str]:
    layers = list(params.distill_layers) if params.distill_layers else list(getattr(module, "shallow_blocks", []))
    modules = dict(module.named_modules())
    if not layers:
        raise ConfigError("Method 'fsar_gcn': the model lists no shallow_blocks; name the blocks to distil with "
                          "method.distill_layers.")
    missing = [n for n in layers if n not in modules or n == ""]
    if missing:
        raise ConfigError(f"Method 'fsar_gcn': method.distill_layers {missing} are not modules of the model; its "
                          f"modules: {', '.join(n for n in modules if n)}.")
    return layers


def topology_roles(config, params: FSARGCNParams, module) -> dict[str, str]:
    """The domain-specific topologies are personal; refuse a model without the split."""
    names = [n for n, _ in module.named_parameters()]
    has = lambda pattern: any(fnmatch.fnmatchcase(n, pattern) for n in names)  # noqa: E731
    if not (has(SHARED_TOPOLOGY) and has(SPECIFIC_TOPOLOGY)):
        raise _no_topology(module)
    distill_layers(params, module)
    return {SPECIFIC_TOPOLOGY: "personal"}


def grain(features: torch.Tensor, kind: str) -> torch.Tensor:
    """One grain of block features ``[N, C, T, V]``."""
    if features.dim() != 4:
        raise ConfigError(f"Method 'fsar_gcn' distils block features shaped [batch, channels, frames, joints]; got "
                          f"{tuple(features.shape)}. Distil the graph blocks (method.distill_layers).")
    if kind == "motion":
        return features[:, :, 1:] - features[:, :, :-1]
    if kind == "body":
        return features.mean(dim=3)
    return features


def mkd_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], grains: list[str]) -> torch.Tensor:
    """(1/|B|) Σ_b Σ_g MSE(g(φ_b^student), g(φ_b^teacher)) with the teacher detached."""
    total = sum(F.mse_loss(grain(s, g), grain(t.detach(), g)) for s, t in zip(student, teacher) for g in grains)
    return total / len(student)


class FSARGCNClient(ClientAlgorithm):
    def __init__(self, params: FSARGCNParams, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.params = params

    def train(self, job, worker, generator) -> JobResult:
        model = worker.model
        teacher = teacher_model(worker, "_fsar_gcn_teacher")
        with torch.no_grad():
            teacher.flat.copy_(model.flat)  # the received shared model ...
            teacher.personal.zero_()  # ... as the server holds it: no domain-specific topology
        beta, grains = self.params.beta, list(self.params.grains)

        def term(student, teacher_feats):
            return beta * mkd_loss(student, teacher_feats, grains)

        return train_distilling(self, job, worker, generator, teacher, distill_layers(self.params, model.module),
                                term if beta != 0 else None)


def _client(config, params):
    return FSARGCNClient(params, config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fsar_gcn",
        summary="FSAR on a graph model: shared topology aggregated, client-specific topology kept local, "
                "multi-grain distillation of shallow-block motion features from the server model",
        citation="Guo et al., FSAR, ICCV 2023 (arXiv 2306.11046)",
        preset=Preset(client=_client),
        params=FSARGCNParams,
        roles=topology_roles,
    )
)
