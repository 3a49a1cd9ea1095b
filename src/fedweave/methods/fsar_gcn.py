"""FSAR on graph-convolutional models — Guo, Liu, Sun, Guo, Zhang & Si, "FSAR: Federated
Skeleton-based Action Recognition with Adaptive Topology Structure and Knowledge
Distillation", ICCV 2023 (arXiv 2306.11046).

Sources. The paper's method section could not be read here: the stored copies of
arxiv.org/html/2306.11046v1, the CVF open-access page and paperswithcode give the abstract
and introduction only (searched: pages, docs, code and issues corpora for the title, "Adaptive
Topology Structure", "Multi-grain Knowledge Distillation", "influence matrix", "unique
matrix", in English and Chinese). The **official code** was found and read:
github.com/DivyaGuo/FSAR, commit d16b454 ("add fsar"; later commits delete the method's
files), ``fsar/applications/fedhar/client.py`` (the client's loss), ``fsar/easyfl/models/
stgcn.py`` (the graph model), ``fsar/applications/fedhar/model.py`` and
``fsar/easyfl/server/{base,strategies}.py``. What follows is that code's method, with each
default cited; "ours" marks what the code does not fix. A third-party Chinese summary of
the paper in the code index (unattributed) adds two things the released code does not
have: learnable coefficients (α, β, γ) weighting Â, the shared and the specific topology
(the paper's Tables 3–4), and that aligning the first two blocks works best (Fig. 9). We
could not read their form, so the coefficients are not implemented; the depth is used as
the default below.

This method needs a graph model whose forward pass exposes the topology split and a cut at
a block boundary, as ``stgcn`` (:mod:`fedweave.tasks.skeleton`) does: block l's adjacency is

    A^{(l)}_i = (Â + S + P_i) ⊙ M_l

**Adaptive Topology Structure (ATS).** S (``topology_shared``, the code's ``learnableB``;
the paper's domain-invariant topology) is one V×V matrix for the whole network, trained on
every client and aggregated with everything else that is shared (FedAvg, example-weighted),
as are the per-block edge-importance masks M_l. P_i (``topology_specific``, the code's
``unshareC``; the domain-specific topology) is one V×V matrix per client, "decoupled from
global model aggregation": role ``personal`` — trained on the client, kept in its client
state, never uploaded (the code strips it before upload and re-attaches it for the next
round and for testing). Â is the fixed physical prior. The server's model is (Â + S) ⊙ M_l
(P at its initial value 0): the "globally generalized model" the test set scores; with
``eval.personalized: true`` each client is also scored with its own P_i.

**Multi-grain Knowledge Distillation (MKD)** (the code's ``train``). The teacher is the
model the client received this round, frozen. Besides the client's own forward pass
(logits z), there are m *hybrid streams*: stream ℓ = 1..m takes the teacher's features
after its first ℓ blocks, h_ℓ^s, computed with the adjacency S ⊙ M_l alone (the code's
``mode='global'``; ``method.teacher_topology: full`` uses (Â + S) ⊙ M_l instead, ours), and
runs the *client's* blocks ℓ, ℓ+1, … and head on them (logits z_ℓ). The client's loss is

    L_i = CE(z, y) + λ_ce · (1/m) Σ_ℓ CE(z_ℓ, y) + λ_kl · (1/m) Σ_ℓ KL(softmax(z_ℓ/T) ‖ softmax(z/T))
          + (μ/2) ‖w − w_received‖²  (over the shared parameters)

with KL averaged over the batch, gradients through both z_ℓ and z (neither is detached in
the code). Defaults from the code: λ_ce = ``method.branch_ce`` = 0.5
(``args_lambda_branch_ce``), λ_kl = ``method.branch_kl`` = 0.5 (``args_lambda_branch_kl``),
T = ``method.temperature`` = 1 (``args_temp``), μ = ``method.mu`` = 0.01 (``mu`` with
``args_lambda_reg = 1``; the code excludes the specific topology and the classifier from
it; here it covers the shared parameters, classifier included). m = ``method.mkd_depth``:
default 2, the depth the paper reports best (Fig. 9, via the summary above); the code's
``num_level_to_align = 1`` counts the output of its input BatchNorm as the first level, a
stream identical to the main one in a model without input normalisation, so its streams
are counted here from the first *block* on. ``mkd_depth: 0`` is ATS alone. The teacher's
forward pass is extra local work the virtual clock does not charge.

Differences from the code, all ours: the classifier is shared (the code keeps each
client's last linear layer local because its clients are datasets with different label
sets; here every client has the same eight actions, and a personal head is the general
form ``fsar``); the server aggregates by FedAvg (the code's server applies a FedAGM-style
lookahead, τ = 0.8, λ = 0.8, to every method it runs, ``server/base.py``; not FSAR's
contribution as the paper's abstract states it). The code trains one batch per local epoch
(a ``break`` in its loop); here a local epoch is the client's whole data.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.client import ClientAlgorithm, JobResult
from ..core.errors import ConfigError
from .distill import teacher_model
from .registry import MethodInfo, MethodParams, Preset, register

SHARED_TOPOLOGY = "*topology_shared"
SPECIFIC_TOPOLOGY = "*topology_specific"


class FSARGCNParams(MethodParams):
    mkd_depth: int = Field(2, ge=0, description="m: hybrid streams from the server model's first 1..m blocks (2: "
                                                 "the paper's best, Fig. 9, per a third-party summary); 0 = ATS alone")
    branch_ce: float = Field(0.5, ge=0, description="λ_ce: weight of the streams' cross-entropy (official code 0.5)")
    branch_kl: float = Field(0.5, ge=0, description="λ_kl: weight of KL(stream ‖ main) (official code 0.5)")
    temperature: float = Field(1.0, gt=0, description="T of the streams' KL (official code 1)")
    mu: float = Field(0.01, ge=0, description="μ of the proximal term on the shared parameters (official code 0.01)")
    teacher_topology: Literal["shared", "full"] = Field(
        "shared", description="adjacency of the server model's features: shared = S ⊙ M (official code), "
                              "full = (Â + S) ⊙ M (ours)")


def _no_topology(module) -> ConfigError:
    return ConfigError(
        f"Method 'fsar_gcn' splits a graph model's adjacency into a shared (aggregated) and a client-specific "
        f"(kept local) topology, but this model ({type(module).__name__}) has no graph adjacency parameters: it needs "
        f"parameters named '{SHARED_TOPOLOGY}' and '{SPECIFIC_TOPOLOGY}' (model.name: stgcn has them). For a model "
        "without a graph use method 'fsar' (the general form, with a personal head)."
    )


def check_model(params: FSARGCNParams, module) -> None:
    """The model must expose the topology split and, for MKD, the cut at a block boundary."""
    names = [n for n, _ in module.named_parameters()]
    has = lambda pattern: any(fnmatch.fnmatchcase(n, pattern) for n in names)  # noqa: E731
    if not (has(SHARED_TOPOLOGY) and has(SPECIFIC_TOPOLOGY)):
        raise _no_topology(module)
    if params.mkd_depth == 0:
        return
    blocks = getattr(module, "blocks", None)
    if not (callable(getattr(module, "block_outputs", None)) and callable(getattr(module, "forward_from", None))
            and blocks is not None):
        raise ConfigError(f"Method 'fsar_gcn': multi-grain distillation runs the client's later blocks on the server "
                          f"model's shallow-block features, and this model ({type(module).__name__}) does not expose "
                          "that cut (block_outputs, forward_from and blocks, as stgcn has). Set method.mkd_depth: 0 "
                          "for the Adaptive Topology Structure alone.")
    if params.mkd_depth > len(blocks):
        raise ConfigError(f"Method 'fsar_gcn': method.mkd_depth is {params.mkd_depth}, but the model has only "
                          f"{len(blocks)} blocks; use 1 to {len(blocks)} (or 0 for no distillation).")


def topology_roles(config, params: FSARGCNParams, module) -> dict[str, str]:
    """The domain-specific topology is personal; refuse a model without the split."""
    check_model(params, module)
    return {SPECIFIC_TOPOLOGY: "personal"}


def mkd_loss(main: torch.Tensor, streams: list[torch.Tensor], y: torch.Tensor, branch_ce: float, branch_kl: float,
             temperature: float) -> torch.Tensor:
    """λ_ce · mean_ℓ CE(z_ℓ, y) + λ_kl · mean_ℓ KL(softmax(z_ℓ/T) ‖ softmax(z/T)), KL
    averaged over the batch; gradients reach both the streams and the main logits."""
    if not streams:
        return main.new_zeros(())
    ce = sum(F.cross_entropy(z, y) for z in streams) / len(streams)
    log_main = F.log_softmax(main / temperature, dim=1)
    kl = sum(F.kl_div(log_main, F.softmax(z / temperature, dim=1), reduction="batchmean") for z in streams)
    return branch_ce * ce + branch_kl * kl / len(streams)


class FSARGCNClient(ClientAlgorithm):
    """Local training with L_i above; the proximal term is the standard FedProx hook."""

    def __init__(self, params: FSARGCNParams):
        super().__init__("prox" if params.mu > 0 else "plain", params.mu)
        self.params = params

    def mkd_objective(self, worker):
        """The loss L_i without μ's term (a gradient hook), or None for ATS alone (the task loss)."""
        p = self.params
        if p.mkd_depth == 0:
            return None
        teacher = teacher_model(worker, "_fsar_gcn_teacher")
        with torch.no_grad():
            teacher.flat.copy_(worker.model.flat)  # the received shared model ...
            teacher.personal.zero_()  # ... as the server holds it: the specific topology at its start
        task, depth = worker.task, p.mkd_depth

        def loss(module, xb, yb):
            main = module(xb)
            with torch.no_grad():
                feats = teacher.module.block_outputs(xb, depth, p.teacher_topology)
            streams = [module.forward_from(h, level) for level, h in enumerate(feats, start=1)]
            return task.loss(main, yb) + mkd_loss(main, streams, yb, p.branch_ce, p.branch_kl, p.temperature)

        return loss

    def train(self, job, worker, generator) -> JobResult:
        from ..train import local_train

        idx = worker.data.client_train[job.client_id]
        result = local_train(worker.model, worker.task, worker.data.x, worker.data.y, idx, job.settings, generator,
                             self.grad_hooks(job, worker), self.mkd_objective(worker))
        update = self.build_update(job, worker, result.steps, {"loss": result.mean_loss})
        return JobResult(update, None, result.examples_processed)


def _client(config, params):
    if config.client.objective == "prox":
        raise ConfigError("Method 'fsar_gcn' has its own proximal term (method.mu, 0.01 as in the official FSAR "
                          "code); client.objective prox would add a second one. Set method.mu instead.")
    return FSARGCNClient(params)


METHOD = register(
    MethodInfo(
        name="fsar_gcn",
        summary="FSAR on a graph model: shared topology aggregated, client-specific topology kept local, "
                "multi-grain distillation through hybrid streams from the server model's shallow blocks",
        citation="Guo et al., FSAR, ICCV 2023 (arXiv 2306.11046; code github.com/DivyaGuo/FSAR)",
        preset=Preset(client=_client),
        params=FSARGCNParams,
        roles=topology_roles,
    )
)
