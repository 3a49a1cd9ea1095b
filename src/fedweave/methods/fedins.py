"""FedIns — Feng, Yu, Liu, Xu, Khan & Zuo, "Towards Instance-adaptive Inference for
Federated Learning", ICCV 2023 (official code: github.com/chunmeifeng/FedIns).

A frozen pretrained backbone is tuned with *pools* of SSF (scale-and-shift features)
parameters. Every pool entry p ∈ {1..P} has a key k_p; an instance x picks the k entries
whose keys are most similar to its query q(x), and uses the mean of their parameters:

    q(x)   = the frozen backbone's features of x (without SSF)
    S(x)   = top-k_p cos(q(x), k_p)                                 (k = top_k, P = pool_size)
    h_l    = ReLU( (W_l h_{l−1} + b_l) ⊙ mean_{p∈S} γ_{l,p} + mean_{p∈S} β_{l,p} )
    logits = mean_{p∈S} (H_p h_L + c_p)                             (a pooled head, as in the code)
    loss   = (1 − λ) CE(logits, y) + λ (1 − (1/B) Σ_x Σ_{p∈S(x)} cos(q(x), k_p))

with λ = ``method.key_weight`` (0.1). The key term pulls the selected keys towards their
queries (the top-k choice itself passes no gradient). The server averages the pools —
scales, shifts, head pools and keys — as FedAvg; the backbone has role ``frozen``: never
trained, never sent, not counted in bytes. Defaults P = 25, k = 3 (the code's).

The model is ``model.name: ssf_pool`` (registered here): an MLP backbone of
``model.hidden`` linear layers (default [200, 200]) with an SSF pool after every hidden
linear layer, a pooled linear head and the keys; ``model.kwargs``: ``pool_size``,
``top_k``, ``pretrain`` ({epochs, lr, batch_size, momentum, weight_decay}). Whatever the
method, an ``ssf_pool`` model is built on a backbone **pretrained centrally on the
server-held split** (``data.server_fraction`` > 0; class-balanced, disjoint from the
clients' data and the test set; no hub downloads) with a temporary linear head that is
then dropped — see :mod:`fedweave.pretrain`. So ``method.name: fedavg`` with
``pool_size: 1, top_k: 1`` is plain FedAvg SSF tuning of the same frozen backbone, the
baseline of the paper's comparison. The pretraining's accuracies appear in the run
summary (``pretrain_split_accuracy``; ``pretrain_test_accuracy`` = the pretrained
backbone + its temporary head on the test set, for reference only).

Differences from the official code, all deliberate:

* the code uses a ViT-B/16 pretrained on ImageNet, its CLS token as the query, and SSF
  after every block's operations; here a small MLP pretrained on the public split, its
  last hidden features as the query, SSF after every hidden linear layer;
* the code trains and tests one instance at a time (batch 1), and its SSF selection
  averages over the batch; here minibatches with a per-instance selection (the same
  function as batch 1, vectorized);
* the code weights clients uniformly and every client takes part in every round; here the
  FedAvg preset (size weights; overridable with ``method.weighting``) under the run's
  client sampling.
* initialisation as in the code: scales N(1, 0.02), shifts N(0, 0.02), keys truncated
  N(0, 0.02), head pool Kaiming normal, head bias 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..models import register_model
from .registry import MethodInfo, MethodParams, Preset, register

MODEL_NAME = "ssf_pool"


class SSFPoolNet(nn.Module):
    """Frozen MLP backbone + SSF pools with keys + a pooled linear head."""

    def __init__(self, input_shape, num_classes: int, hidden=(200, 200), pool_size: int = 25, top_k: int = 3):
        super().__init__()
        if not hidden:
            raise ConfigError("ssf_pool needs at least one hidden layer (model.hidden).")
        if not 1 <= top_k <= pool_size:
            raise ConfigError(f"ssf_pool needs 1 <= top_k <= pool_size; got top_k={top_k}, pool_size={pool_size}.")
        self.pool_size, self.top_k = int(pool_size), int(top_k)
        sizes = [prod(input_shape), *hidden]
        self.backbone = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.ssf_scale = nn.ParameterList(nn.Parameter(torch.randn(pool_size, h) * 0.02 + 1.0) for h in hidden)
        self.ssf_shift = nn.ParameterList(nn.Parameter(torch.randn(pool_size, h) * 0.02) for h in hidden)
        w = torch.empty(pool_size, num_classes, hidden[-1])
        nn.init.kaiming_normal_(w)
        self.head_weight = nn.Parameter(w)
        self.head_bias = nn.Parameter(torch.zeros(pool_size, num_classes))
        self.keys = nn.Parameter(nn.init.trunc_normal_(torch.empty(pool_size, hidden[-1]), std=0.02))
        self.key_similarity: torch.Tensor | None = None  # set by forward: (1/B) Σ_x Σ_{p∈S(x)} cos(q, k_p)

    def features(self, x: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone features; with ``mix`` [B, P] (1/k at each instance's selected entries)
        the per-instance mean SSF parameters are applied."""
        h = x.flatten(1)
        for lin, scale, shift in zip(self.backbone, self.ssf_scale, self.ssf_shift):
            h = lin(h)
            if mix is not None:
                h = h * (mix @ scale) + mix @ shift
            h = torch.relu(h)
        return h

    def query(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.features(x)

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [B, k] of the keys most cosine-similar to each query, the mean over the
        batch of the summed similarities of the selected keys — differentiable in the keys)."""
        q = F.normalize(query, dim=1)
        k = F.normalize(self.keys, dim=1)
        sim = q @ k.t()  # [B, P]
        idx = sim.detach().topk(self.top_k, dim=1).indices
        matched = sim.gather(1, idx).sum() / max(len(q), 1)
        return idx, matched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx, self.key_similarity = self.select(self.query(x))
        # the mean over the selected entries as a [B, P] mixing matrix: gathers become matmuls
        mix = (idx.unsqueeze(-1) == torch.arange(self.pool_size, device=idx.device)).to(self.keys.dtype).mean(1)
        h = self.features(x, mix)
        per_entry = torch.einsum("bh,pch->bpc", h, self.head_weight)  # [B, P, C]
        return torch.einsum("bp,bpc->bc", mix, per_entry) + mix @ self.head_bias


_PRETRAIN_KEYS = ("epochs", "lr", "batch_size", "momentum", "weight_decay")


def build_ssf_pool(input_shape, num_classes, width: int = 16, hidden=None, pool_size: int = 25, top_k: int = 3,
                   pretrain: dict | None = None, **unused) -> nn.Module:
    if unused:
        raise ConfigError(
            f"Unexpected option(s) for model {MODEL_NAME!r}: {', '.join(sorted(unused))}. "
            f"Its options: model.hidden, model.kwargs.pool_size, top_k, pretrain."
        )
    pretrain_settings(pretrain)  # validated here, used by setup_ssf_pool
    return SSFPoolNet(input_shape, num_classes, tuple(hidden) if hidden else (200, 200), pool_size, top_k)


def pretrain_settings(value: dict | None):
    from ..pretrain import PretrainSettings

    value = dict(value or {})
    bad = [k for k in value if k not in _PRETRAIN_KEYS]
    if bad:
        raise ConfigError(f"model.kwargs.pretrain: unknown key(s) {', '.join(bad)}; allowed: {', '.join(_PRETRAIN_KEYS)}.")
    try:
        s = PretrainSettings(**value)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs.pretrain: {exc}") from None
    if s.epochs < 0 or s.lr <= 0 or s.batch_size < 1:
        raise ConfigError("model.kwargs.pretrain needs epochs >= 0, lr > 0 and batch_size >= 1.")
    return s


@dataclass
class PretrainedFactory:
    """Builds the model with the inner factory, then loads the pretrained backbone (picklable)."""

    inner: Any
    backbone: dict[str, torch.Tensor]

    def __call__(self) -> nn.Module:
        module = self.inner()
        with torch.no_grad():
            for name, t in module.backbone.state_dict().items():
                t.copy_(self.backbone[name])
        return module


class _PretrainReport:
    """An observer that only adds the pretraining figures to the run summary."""

    def __init__(self, figures: dict[str, float]):
        self.figures = figures

    def on_upload(self, update, round_):
        pass

    def on_round_end(self, state, round_):
        pass

    def evaluate(self, module, state):
        return {}

    def summary(self):
        return dict(self.figures)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def setup_ssf_pool(exp) -> None:
    """Model set-up: an ``ssf_pool`` model gets a backbone pretrained on the server-held
    split, whatever the method (FedAvg on the same backbone is FedIns' baseline)."""
    from ..pretrain import accuracy, pretrain
    from ..core.rng import derive_seed

    cfg = exp.config
    server = exp.data.server_data()
    if server is None:
        raise ConfigError(
            f"Model {MODEL_NAME!r} pretrains its frozen backbone centrally on the server-held split, and this run has "
            "none; set data.server_fraction > 0 (e.g. 0.1)."
        )
    settings = pretrain_settings(cfg.model.kwargs.get("pretrain"))
    module = exp.model_factory()
    torch.manual_seed(derive_seed(cfg.seed, "pretrain-head"))
    backbone = copy.deepcopy(module.backbone).requires_grad_(True)
    layers: list[nn.Module] = [nn.Flatten()]
    for lin in backbone:
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(backbone[-1].out_features, exp.data.num_classes))
    net = nn.Sequential(*layers)
    figures = pretrain(net, server[0], server[1], settings, derive_seed(cfg.seed, "pretrain"))
    state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    exp.model_factory = PretrainedFactory(exp.model_factory, state)
    exp.observers.append(_PretrainReport({
        "pretrain_split_accuracy": figures["accuracy"],
        "pretrain_test_accuracy": accuracy(net, exp.data.x_test, exp.data.y_test),
        "pretrain_examples": float(len(server[0])),
    }))


register_model(
    MODEL_NAME,
    build_ssf_pool,
    "frozen MLP backbone (pretrained on the server split) + SSF pools with keys and a pooled head (FedIns); "
    "kwargs pool_size, top_k, pretrain",
    setup=setup_ssf_pool,
)


class FedInsParams(MethodParams):
    key_weight: float = Field(0.1, ge=0, lt=1, description="λ: loss = (1−λ) CE + λ (1 − key similarity)")


class FedInsClient(ClientAlgorithm):
    def __init__(self, key_weight: float, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.key_weight = key_weight

    def loss_fn(self, job, worker):
        task, lam = worker.task, self.key_weight

        def loss(module, xb, yb):
            out = module(xb)
            return (1 - lam) * task.loss(out, yb) + lam * (1 - module.key_similarity)

        return loss


def _client(config, params):
    if config.model.name != MODEL_NAME:
        raise ConfigError(
            f"FedIns tunes SSF pools on a frozen pretrained backbone: set model.name={MODEL_NAME} "
            f"(and data.server_fraction > 0 for the pretraining split), not {config.model.name!r}."
        )
    return FedInsClient(params.key_weight, config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fedins",
        summary="instance-adaptive SSF pools with keys on a frozen pretrained backbone (model ssf_pool); pools averaged",
        citation="Feng et al., ICCV 2023",
        preset=Preset(client=_client),
        params=FedInsParams,
    )
)

