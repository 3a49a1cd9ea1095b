"""FRL — Mozaffari, Shejwalkar & Houmansadr, "Every Vote Counts: Ranking-Based Training of
Federated Learning to Resist Poisoning Attacks", USENIX Security 2023 (official code:
SPIN-UMass/FRL, read for the conventions below).

**Supermask model.** Every ``nn.Linear`` / ``nn.Conv2d`` of the configured model becomes a
supermask layer: its weights are frozen *signed constants* ``sign(w₀)·√2/√fan_in``
(``w₀`` the seeded initialisation; Ramanujan et al.'s "SC" init), biases are removed, and
a trainable score per edge (``kaiming_uniform(a=√5)``, seeded) decides the mask: the
forward pass uses ``w ⊙ 1[edge among the top k of its layer's scores]`` (edge-popup,
straight-through gradient to the scores). k = ``method.sparsity`` (0.5). All other
parameters (normalisation affine weights) are frozen; the shared trainable vector is the
scores.

**Client.** Starts from the global scores, trains them with the standard local trainer
(the official code uses SGD lr 0.4, momentum 0.9, weight decay 1e-4, batch 8: set
``client.*``), and uploads, per layer, its *ranking*: the edge ids sorted by increasing
trained score (``Find_rank``). No scores or deltas are sent.

**Server (vote).** For layer l with n edges, the rank position of edge e in client i's
ranking is ``pos_i(e)`` (0 for its lowest score); votes ``v(e) = Σ_i pos_i(e)``; the edges
sorted by increasing vote (stable: ties go to the lower edge id, so the result is
deterministic) receive the layer's *initial* score values in increasing order. The global
scores are therefore always a permutation of the initial ones.

**Communication.** A ranking is a permutation of n ids: the uplink is counted as
⌈n·⌈log₂ n⌉/8⌉ bytes per layer (plus the usual scalars), and so is the downlink (a client
that knows the initial scores rebuilds the global ones from the global ranking).

**Differences from the official code.** The official forward pass masks by ``|score|``
while ranking by the signed score; we use the signed score for both (top-k edges "with the
highest scores", as the paper describes), so the vote order and the mask agree.

**Threats** (:class:`FRLThreats`, the registration's threat adapter). FRL's uploads are
rankings, so of the update attacks only ``attack.kind: sign_flip`` has a meaning: it is
the paper's (and the official code's) attack, carried out on the cohort — the attackers
sum the rank positions of a reference set R (the round's benign uploads with
``attack.sees_benign``, else their own honest ones) and every attacker submits the reverse
of that aggregate ranking. ``gaussian``, ``scaling`` and the delta-colluding attacks
(``alie``, ``minmax``, ``minsum``) are refused, and so is the eavesdropper: it rebuilds
models from deltas, which FRL never sends.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.messages import Broadcast, SCALAR_BYTES, Update, tensor_bytes
from ..core.params import FlatModel
from ..core.rng import derive_seed, seeded_build
from ..core.strategy import ServerState, Strategy, average_buffers
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, MethodParams, register
from .threat_adapter import ThreatAdapter


class FRLParams(MethodParams):
    sparsity: float = Field(0.5, gt=0, lt=1, description="k: share of each layer's edges kept by the supermask")


# -- supermask layers ------------------------------------------------------------------


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: float) -> torch.Tensor:
        flat = scores.flatten()
        out = torch.zeros_like(flat)
        order = torch.argsort(flat, stable=True)
        out[order[int((1 - keep) * flat.numel()):]] = 1.0
        return out.view_as(scores)

    @staticmethod
    def backward(ctx, grad):
        return grad, None  # straight-through


def top_k_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """1 for the ⌈k·n⌉-ish largest scores (exactly n − ⌊(1−k)n⌋ of them), else 0."""
    return _TopK.apply(scores, keep)


def _signed_constant(weight: torch.Tensor) -> torch.Tensor:
    fan_in = weight[0].numel()
    return torch.sign(weight.detach()) * (math.sqrt(2.0) / math.sqrt(fan_in))


class SupermaskLinear(nn.Module):
    def __init__(self, layer: nn.Linear, keep: float):
        super().__init__()
        self.keep = keep
        self.weight = nn.Parameter(_signed_constant(layer.weight), requires_grad=False)
        scores = torch.empty_like(layer.weight)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        self.scores = nn.Parameter(scores)

    def forward(self, x):
        return F.linear(x, self.weight * top_k_mask(self.scores, self.keep))


class SupermaskConv2d(nn.Module):
    def __init__(self, layer: nn.Conv2d, keep: float):
        super().__init__()
        self.keep = keep
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.weight = nn.Parameter(_signed_constant(layer.weight), requires_grad=False)
        scores = torch.empty_like(layer.weight)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        self.scores = nn.Parameter(scores)

    def forward(self, x):
        w = self.weight * top_k_mask(self.scores, self.keep)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


def to_supermask(module: nn.Module, keep: float) -> int:
    """Replace every Linear / Conv2d in ``module`` (in place); freeze everything else.
    Returns the number of layers replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, SupermaskLinear(child, keep))
            count += 1
        elif isinstance(child, nn.Conv2d):
            setattr(module, name, SupermaskConv2d(child, keep))
            count += 1
        else:
            count += to_supermask(child, keep)
    for pname, p in module.named_parameters(recurse=False):
        if pname != "scores":
            p.requires_grad_(False)
    return count


@dataclass
class FRLModelFactory:
    """The configured model, turned into a supermask network (picklable, seeded)."""

    inner: Any  # fedweave.experiment.ModelFactory
    keep: float
    seed: int

    def __call__(self) -> nn.Module:
        with seeded_build():  # one lock over both seeded builds
            module = self.inner()
            with seeded_build(derive_seed(self.seed, "frl-scores")):
                to_supermask(module, self.keep)
        return module


# -- messages --------------------------------------------------------------------------


def permutation_bytes(n: int) -> int:
    """Bytes of a permutation of n ids at ⌈log₂ n⌉ bits each."""
    return math.ceil(n * max(1, math.ceil(math.log2(n))) / 8) if n > 1 else 1


@dataclass
class RankUpdate(Update):
    """An FRL upload: ``payload["ranking"]`` is a list of per-layer permutations."""

    def num_bytes(self) -> int:
        ranks = sum(permutation_bytes(r.numel()) for r in self.payload.get("ranking", []))
        return ranks + tensor_bytes(self.buffers) + SCALAR_BYTES * (4 + len(self.metrics))


@dataclass
class RankBroadcast(Broadcast):
    """The global scores, counted as the per-layer permutation that determines them."""

    layer_sizes: tuple[int, ...] = ()

    def num_bytes(self) -> int:
        return sum(permutation_bytes(n) for n in self.layer_sizes) + tensor_bytes(self.buffers) + SCALAR_BYTES


def is_rank_update(update) -> bool:
    return isinstance(update, RankUpdate)


# -- the vote ---------------------------------------------------------------------------


def rank_positions(rankings: torch.Tensor) -> torch.Tensor:
    """``[K, n]`` rankings (edge ids by increasing score) → ``[K, n]`` position of each edge."""
    k, n = rankings.shape
    pos = torch.empty_like(rankings)
    pos.scatter_(1, rankings, torch.arange(n, dtype=rankings.dtype).expand(k, n))
    return pos


def frl_vote(rankings: torch.Tensor, sorted_values: torch.Tensor) -> torch.Tensor:
    """New scores ``[n]``: edges sorted by summed rank position (ties → lower edge id)
    receive ``sorted_values`` (ascending) in that order."""
    votes = rank_positions(rankings).sum(dim=0)
    order = torch.argsort(votes, stable=True)
    out = torch.empty_like(sorted_values)
    out[order] = sorted_values
    return out


def reversed_aggregate_ranking(updates: list) -> list[torch.Tensor]:
    """FRL's attack: the reverse of the aggregate ranking of ``updates`` (per layer)."""
    out = []
    for layer in range(len(updates[0].payload["ranking"])):
        rankings = torch.stack([u.payload["ranking"][layer] for u in updates])
        votes = rank_positions(rankings).sum(dim=0)
        out.append(torch.argsort(votes, descending=True, stable=True))
    return out


# -- strategy and client ----------------------------------------------------------------


class FRLStrategy(Strategy):
    name = "frl"

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        self.layers = [sl for _, sl in ctx.spec.layers()]
        state.extra["sorted_init"] = [params[sl].sort().values.clone() for sl in self.layers]
        return state

    def _layers(self, ctx):
        if not hasattr(self, "layers"):
            self.layers = [sl for _, sl in ctx.spec.layers()]
        return self.layers

    def configure(self, client_ids, state, ctx):
        sizes = tuple(sl.stop - sl.start for sl in self._layers(ctx))
        shared = RankBroadcast(state.version, state.params, state.buffers, {}, {}, sizes)
        return {cid: shared for cid in client_ids}

    def aggregate(self, updates, state, ctx) -> ServerState:
        if not updates:
            return state
        params = state.params.clone()
        for i, sl in enumerate(self._layers(ctx)):
            rankings = torch.stack([u.payload["ranking"][i] for u in updates])
            params[sl] = frl_vote(rankings, state.extra["sorted_init"][i])
        state.params = params
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state


class FRLClient(ClientAlgorithm):
    def train(self, job, worker, generator):
        out = super().train(job, worker, generator)
        u = out.update
        scores = worker.model.params
        ranking = [torch.argsort(scores[sl], stable=True) for _, sl in worker.model.spec.layers()]
        out.update = RankUpdate(
            client_id=u.client_id, base_version=u.base_version, delta=None, buffers=u.buffers,
            num_examples=u.num_examples, num_steps=u.num_steps, metrics=u.metrics, payload={**u.payload, "ranking": ranking},
        )
        return out


def _build(config, params: FRLParams):
    return FRLStrategy(), FRLClient(config.client.objective, config.client.mu)


def setup_frl(exp) -> None:
    """Set-up: FRL trains a supermask version of the configured model."""
    cfg = exp.config
    keep = FRLParams.model_validate({k: v for k, v in cfg.method.extras().items() if k in FRLParams.model_fields}).sparsity
    factory = FRLModelFactory(exp.model_factory, keep, cfg.seed)
    module = factory()
    flat = FlatModel(module, exp.roles)
    names = [s.name for s in flat.spec.group("trainable")]
    if not names or any(not n.endswith(".scores") and n != "scores" for n in names):
        raise ConfigError(
            f"FRL needs a model whose trained parameters are all in Linear/Conv2d layers; model {cfg.model.name!r} "
            f"leaves {[n for n in names if not n.endswith('scores')] or 'no layer'} to train."
        )
    if flat.spec.num_buffers:
        raise ConfigError("FRL's vote covers the scores only; use a model without shared buffers (model.norm=group or none).")
    exp.use_model(factory, flat)


class FRLThreats(ThreatAdapter):
    """What the threat models mean for rank uploads (see the module docstring)."""

    cohort_attacks = {"sign_flip": "FRL's reversed ranking"}

    def attack_refusal(self, kind: str) -> str | None:
        if kind in ("gaussian", "scaling", "alie", "minmax", "minsum"):
            return (f"FRL clients upload rankings, not updates: attack.kind={kind} is undefined there. "
                    "Use sign_flip (FRL's reversed-ranking attack) or a data-poisoning attack.")
        return None

    def collude(self, kind: str, updates: list, reference: list[int], malicious: list[int]) -> list | None:
        if not is_rank_update(updates[malicious[0]]):
            return None
        ranking = reversed_aggregate_ranking([updates[i] for i in reference])
        return [dataclasses.replace(u, payload={**u.payload, "ranking": [r.clone() for r in ranking]}) if i in malicious
                else u for i, u in enumerate(updates)]

    def eavesdropper_refusal(self) -> str | None:
        return "The eavesdropper rebuilds models from uplink updates; FRL uploads rankings instead."


def check_rankings(value, dims, sent) -> str | None:
    """Why ``value`` is not one permutation per layer (of the task's layer sizes, when known), or None."""
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of per-layer rankings"
    sizes = tuple(getattr(sent, "layer_sizes", ()) or ())
    if sizes and len(value) != len(sizes):
        return f"has {len(value)} layers; the model has {len(sizes)}"
    for i, r in enumerate(value):
        if not isinstance(r, torch.Tensor) or r.dim() != 1 or r.dtype.is_floating_point or r.dtype == torch.bool:
            return f"layer {i} must be a 1-D integer tensor"
        if sizes and r.numel() != sizes[i]:
            return f"layer {i} ranks {r.numel()} edges; the layer has {sizes[i]}"
        if not torch.equal(torch.sort(r.long()).values, torch.arange(r.numel())):
            return f"layer {i} is not a permutation of 0..{r.numel() - 1}"
    return None


METHOD = register(
    MethodInfo(
        name="frl",
        summary="federated rank learning: supermask scores, ranking uploads, vote aggregation",
        citation="Mozaffari et al., USENIX Security 2023",
        build=_build,
        params=FRLParams,
        setup=setup_frl,
        threats=FRLThreats(),
        payload_schema=PayloadSchema((Entry("ranking", custom=check_rankings, what="per-layer edge rankings"),),
                                     replaces_model=True, update_class=RankUpdate),
    )
)
