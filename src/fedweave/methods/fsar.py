"""FSAR, general form — after "FSAR: Federated Skeleton-based Action Recognition with
Adaptive Topology Structure and Knowledge Distillation" (the seed paper; no official code
found, details beyond the abstract unverified).

The paper has two mechanisms, both kept here in a model-agnostic form:

* **Adaptive Topology Structure (ATS)** separates generalisation from personalisation: a
  domain-invariant part shared across clients and aggregated, and a domain-specific part
  "decoupled from global model aggregation". General form: the segments matching
  ``method.head`` (default: the last layer, as in FedPer) get role ``personal`` — trained
  on the client, kept in the client state, never sent — and the rest is averaged (FedAvg
  preset over the shared vector).
* **Multi-grain Knowledge Distillation (MKD)** aligns shallow block-wise features of the
  local model with those of the global model, against the drift between the clients' and
  the server's updates. General form: the client's loss is

      L = CE(f_local(x), y) + β · (1/|B|) Σ_{b ∈ B} D(φ_b^local(x), sg[φ_b^global(x)])

  where φ_b is the output of block b (``method.distill_layers``: module names; default the
  first top-level submodule holding parameters, e.g. the first linear layer of an MLP or
  the ResNet's stem; in a ``ModuleList``, which has no forward pass of its own, its first
  such element, e.g. ``blocks.0`` of ``stgcn``), the global model is the one received this round (frozen, a "teacher"
  computed in training mode under no_grad), sg is stop-gradient, β = ``method.beta``
  (default 1.0) and D is ``method.distill``: ``mse`` (mean squared error) or ``kl``
  (T² · KL(softmax(φ^global/T) ‖ softmax(φ^local/T)) over the flattened features,
  T = ``method.temperature``). Several layers give the multi-grain version.

Skipped (skeleton-specific): the graph-convolution backbone, the learned adjacency
matrices that ATS actually splits into shared and personal parts, and the motion
(temporal-difference) features of MKD. A personal head is the closest model-agnostic
analogue of a personal topology; any other split is one ``method.head`` pattern away.

Evaluation: like FedPer, the global model carries the initial personal part; use
``eval.personalized: true`` (each client's shared part + its own personal part). The
teacher's forward pass is extra local work that the virtual clock does not charge.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.client import ClientAlgorithm, JobResult
from ..core.errors import ConfigError
from .distill import teacher_model, train_distilling
from .fedper import HeadParams, head_roles
from .registry import MethodInfo, Preset, register


class FSARParams(HeadParams):
    beta: float = Field(1.0, ge=0, description="β: weight of the shallow-feature distillation loss")
    distill: Literal["mse", "kl"] = Field("mse", description="feature distance: mse | kl (softmax over features)")
    temperature: float = Field(1.0, gt=0, description="T of the kl distance")
    distill_layers: Optional[list[str]] = Field(
        None, description="module names whose outputs are distilled (default: the first top-level block with parameters)"
    )


def first_block(module: torch.nn.Module) -> str:
    for name, child in module.named_children():
        if any(True for _ in child.parameters()):
            if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):  # never called: hook its first block
                return f"{name}.{first_block(child)}"
            return name
    raise ConfigError("FSAR: the model has no submodule with parameters to distil.")


def _layers(params, module) -> list[str]:
    return list(params.distill_layers) if params.distill_layers else [first_block(module)]


def fsar_roles(config, params, module) -> dict[str, str]:
    modules = dict(module.named_modules())
    missing = [n for n in _layers(params, module) if n not in modules or n == ""]
    if missing:
        names = [n for n in modules if n]
        raise ConfigError(f"FSAR: method.distill_layers {missing} are not modules of the model; its modules: {', '.join(names)}.")
    return head_roles(config, params, module)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(student, teacher)
    s = student.flatten(1) / temperature
    t = teacher.flatten(1) / temperature
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="batchmean") * temperature**2


class FSARClient(ClientAlgorithm):
    def __init__(self, params: FSARParams, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.beta = params.beta
        self.kind = params.distill
        self.temperature = params.temperature
        self.layers = params.distill_layers

    def train(self, job, worker, generator) -> JobResult:
        model = worker.model
        teacher = teacher_model(worker, "_fsar_teacher")
        with torch.no_grad():
            teacher.flat.copy_(model.flat)  # the received global model (+ this client's personal part)
        names = self.layers or [first_block(model.module)]
        beta, kind, temp = self.beta, self.kind, self.temperature

        def term(student, teacher_feats):
            d = sum(feature_distance(s, t.detach(), kind, temp) for s, t in zip(student, teacher_feats))
            return beta * d / len(names)

        return train_distilling(self, job, worker, generator, teacher, names, term if beta != 0 else None)


def _client(config, params):
    return FSARClient(params, config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fsar",
        summary="shared + personal parts (method.head) with shallow-feature distillation from the global model (method.beta)",
        citation="FSAR (federated skeleton-based action recognition), general form",
        preset=Preset(client=_client),
        params=FSARParams,
        roles=fsar_roles,
    )
)
