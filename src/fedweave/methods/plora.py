"""pLoRA — personalized LoRA, the federated fine-tuning scheme of FedVLM (Mitra, Anjum,
Agbaje, Pesé & Olufowobi, "FedVLM: Scalable Personalized Vision-Language Models through
Federated Learning", ECAI 2025, arXiv 2507.17088): LoRA adapters ΔW = B·A_i on a frozen
base, the server averages the B matrices only and each client keeps its own A_i.
Compared against FedAvg-LoRA (average A and B) and local-only LoRA through
``method.share``.

Sources. The paper's method section could not be read here, and no official code was
found. Searched: the pages corpus (arxiv.org/html/2507.17088v1 holds the abstract and
the start of Figure 1's caption only — clients train "pLoRA matrices locally" with the
pre-trained weights frozen, "The pLoRA matrix B…" cut off; huggingface.co/papers/2507.17088,
sciencestack.ai, newx.sg and getnews.me hold the abstract and summaries); the code corpus,
``find_string`` "FedVLM" and "pLoRA", and ``find_repos`` "FedVLM" (WttDayDayKing/FedVLM is
FedVLMBench, another paper; a paper list gives FedVLM's code link as "None"); the issues
and docs corpora (nothing). "B aggregated, A_p kept on the client" is what the
sciencestack.ai summary states ("shares only the B matrix globally while learning
client-specific A_p") and a Chinese paper list repeats; it matches the split below. The
*dynamic* rule is not stated anywhere we could read: it stays ours (below).

**Adapters (via ``peft``).** Every targeted ``nn.Linear`` of the configured model becomes
a ``peft`` LoRA layer, ``y = W x + b + (α/r)·B A x``: A is ``r × in``, B is ``out × r``.
Targets (``method.target``, fnmatch patterns over module names) default to every
``nn.Linear`` except the last one in module order — the output layer (``lm_head`` of the
``transformer``): for the transformer that is the attention projections q, k, v, o and the
MLP's fc1, fc2 of every block. ``torchvision:`` and ``hf:`` models default to the
targets of their architecture (``fedweave.models.hub``: ``c_attn`` for GPT-2, ``q_proj``
and ``v_proj`` for Llama-style models, the residual blocks' convolutions and ``fc`` for
ResNets), as in Hu et al. 2021 (LoRA), which adapts the attention's query and value; a
``target`` pattern may name any ``nn.Linear``, convolution or GPT-2 ``Conv1D``. All base weights (embeddings, LayerNorms, the targeted
layers' own weights and biases, the output layer) take role ``frozen``: neither trained
nor sent, and not counted in bytes. A model without a ``nn.Linear`` (or a ``target`` that
matches none) is rejected when the experiment is built, before any run directory exists.
Base weights come from the model's factory, e.g. a pretrained base through
``model.kwargs.init_from`` of the ``transformer``: LoRA on a random base learns little.

**Initialisation — the shared basis.** A is initialised as ``peft`` does (Kaiming-uniform,
a = √5, i.e. U(−1/√in, 1/√in)) and B = 0, from the generator seeded with
``derive_seed(seed, "lora-init")`` right after the base is built: every client starts from
the *same* A. This is what makes averaging B meaningful: B is averaged across clients
whose ΔW_i = B A_i live in the same (initial) row space, and the A_i drift apart only by
their local training. ``method.a_init: per_client`` draws each client's A from its own
seed (``derive_seed(seed, "lora-a", client)``) on its first job instead — an ablation
that shows what averaging B across unrelated bases does. ``method.freeze_a: true`` keeps
the shared A fixed (role ``frozen``, never trained or sent): then pLoRA and FedAvg-LoRA
coincide, and B is averaged in an exactly shared basis.

**Roles by ``method.share``.**

* ``B`` (pLoRA, default): B ``trainable`` (averaged), A ``personal`` (trained, kept on
  the client, restored for it every round). The server state and both directions carry
  the B matrices only.
* ``both`` (FedAvg-LoRA): A and B ``trainable``, both averaged and sent.
* ``local`` (no federation): A and B ``personal``; the server aggregates nothing, and
  messages carry no adapter.

**Dynamic adaptation** (``method.dynamic: true``, with ``share: B``). FedVLM says pLoRA
"dynamically adapts LoRA parameters to each client's unique data distribution" while B is
aggregated and A_p stays on the client; its method section and any code could not be
found (see Sources above), so the rule below is ours, one closed-form reading of that
sentence, and τ's default (0.1) is ours too. Client i
keeps, besides A_i, its own B_i from the end of its last round. At the start of round t it
scores, on its own training data (mean task loss, eval mode, no gradient), the received
global adapter and its own:

    L_g = L_i(B̄^t, A_i)        L_p = L_i(B_i^{t−1}, A_i)
    λ_i^t = σ((L_g − L_p) / τ)        (σ the logistic function; τ = ``method.temperature``, default 0.1)
    B_i^{t,start} = B̄^t + λ_i^t (B_i^{t−1} − B̄^t)

and trains from there; it uploads B_i^{t,end} − B̄^t (so the server's average stays the
FedAvg of the clients' B), keeps B_i^t = B_i^{t,end} and λ_i^t. A client whose own adapter
fits its data better than the global one (L_p < L_g) keeps more of it; one the global
adapter serves better follows the global one; λ = 0 on a client's first round. With
``eval.personalized`` the client is scored with B̄ + λ_i (B_i − B̄) and its A_i (its last
λ). "B" here is the whole shared adapter vector (plus any layer ``model.roles`` makes
trainable). The per-client state (A_i as the personal part, ``b_own`` and ``lambda``) is
kept in the client-state store and checkpointed with the run, so a resumed run ends as the
uninterrupted one (tests/test_seed_vlm.py).

Server: w ← w + Σ_k n_k Δ_k / Σ_k n_k over the shared adapter vector (FedAvg on the
adapters); ``local`` only advances the version. With ``eval.personalized: true`` each
client is scored with the global shared part and its own personal part: (B̄, A_i) for
pLoRA, its own (B_i, A_i) for ``local``, the global model for ``both``. The global-model
figures of pLoRA use (B̄, A_0), A_0 the shared initialisation; of ``local``, the base model.

User ``model.roles`` still apply (after the LoRA patterns): e.g. ``{'lm_head.*':
trainable}`` also trains and averages the output layer. Names after wrapping follow
``peft``: ``blocks.0.attn.q.base_layer.weight``, ``...q.lora_A.default.weight``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.params import FlatModel
from ..core.rng import derive_seed, seeded_build, torch_generator
from ..core.strategy import ServerState, Strategy, average_buffers, size_weights, stack_deltas
from .registry import MethodInfo, MethodParams, register

A_PATTERN = "*.lora_A.*"
B_PATTERN = "*.lora_B.*"


class PLoRAParams(MethodParams):
    share: Literal["B", "both", "local"] = Field(
        "B", description="what the server averages: B (pLoRA: A stays on the client), both (FedAvg-LoRA), local (nothing)"
    )
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the adapter is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout on the adapter's input")
    target: Optional[list[str]] = Field(
        None, description="fnmatch patterns of the modules to adapt (default: the architecture's for torchvision:/hf: models, else every nn.Linear but the output layer)"
    )
    a_init: Literal["shared", "per_client"] = Field(
        "shared", description="A's initialisation: one seeded A for all clients (shared basis) or one per client"
    )
    freeze_a: bool = Field(False, description="keep the shared initial A fixed (not trained, not sent)")
    dynamic: bool = Field(False, description="per-client blend of the global and the client's own B, by their losses")
    temperature: float = Field(0.1, gt=0, description="τ of the dynamic blend λ = σ((L_global − L_own) / τ)")


def _params(config) -> PLoRAParams:
    extras = config.method.extras()
    return PLoRAParams.model_validate({k: v for k, v in extras.items() if k in PLoRAParams.model_fields})


# -- the adapted model ---------------------------------------------------------------------


def linear_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]


def adaptable_names(module: nn.Module) -> list[str]:
    """Modules ``peft`` can adapt by name: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and the
    ``Conv1D`` of GPT-2-style ``transformers`` models (a linear layer stored transposed)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [n for n, m in module.named_modules()
            if n and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")]


def select_targets(module: nn.Module, patterns: list[str] | None, model_name: str = "the model") -> list[str]:
    """The module names LoRA adapts, or a ConfigError that says why none.

    Without ``method.target``, a model that declares its architecture's default
    (``lora_targets``: ``torchvision:`` and ``hf:`` models, see
    :mod:`fedweave.models.hub`) gets that; any other model every ``nn.Linear`` but the last."""
    if patterns is None:
        patterns = getattr(module, "lora_targets", None)
        if patterns is None:
            names = linear_names(module)
            if not names:
                raise ConfigError(
                    f"pLoRA adapts nn.Linear layers, and {model_name} has none. Use a model with linear layers "
                    "(e.g. model.name: transformer, mlp)."
                )
            return names[:-1] or names  # all but the output layer (the only one if it is alone)
    names = adaptable_names(module)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"method.target {patterns} matches no nn.Linear (or convolution) of {model_name}; its "
                          f"adaptable layers: {names}.")
    return chosen


def add_lora(module: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float) -> nn.Module:
    """Inject ``peft`` LoRA adapters into ``module`` in place (A Kaiming-uniform, B = 0)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError('Method plora needs the peft package: pip install "fedweave[lora]"') from None
    # GPT-2's Conv1D stores its weight transposed (in x out): peft must be told
    transposed = any(type(m).__name__ == "Conv1D" for n, m in module.named_modules() if n in set(targets))
    # one regular expression, which peft matches against whole module names: a list would be
    # matched by suffix, so the name "1" would also pick "0.1" (a ReLU in the cnn)
    exact = "|".join(re.escape(t) for t in targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=exact, bias="none",
                        fan_in_fan_out=transposed)
    return inject_adapter_in_model(config, module)


@dataclass
class LoRAModelFactory:
    """The configured model with LoRA adapters (picklable, seeded: the same A everywhere)."""

    inner: Any  # fedweave.experiment.ModelFactory
    targets: tuple[str, ...]
    rank: int
    alpha: float
    dropout: float
    seed: int

    def __call__(self) -> nn.Module:
        with seeded_build():  # one lock over both seeded builds
            module = self.inner()
            with seeded_build(derive_seed(self.seed, "lora-init")):
                return add_lora(module, list(self.targets), self.rank, self.alpha, self.dropout)


def lora_roles(share: str, freeze_a: bool, user_roles: dict[str, str]) -> dict[str, str]:
    a_role = "frozen" if freeze_a else {"B": "personal", "both": "trainable", "local": "personal"}[share]
    b_role = "personal" if share == "local" else "trainable"
    return {A_PATTERN: a_role, B_PATTERN: b_role, **user_roles, "*": "frozen"}


def per_client_a(model: FlatModel, seed: int, client_id: int) -> None:
    """Draw client ``client_id``'s own A matrices (Kaiming-uniform like peft) in place."""
    gen = torch_generator(seed, "lora-a", client_id)
    for seg in model.spec.group("personal"):
        if fnmatch.fnmatchcase(seg.name, A_PATTERN):
            bound = 1.0 / math.sqrt(seg.shape[1])
            values = torch.rand(seg.shape, generator=gen, dtype=model.spec.dtype) * (2 * bound) - bound
            model.personal[seg.slice].copy_(values.flatten())


# -- strategy and client -------------------------------------------------------------------


class PLoRAStrategy(Strategy):
    name = "plora"

    def __init__(self, share: str = "B"):
        self.share = share

    def aggregate(self, updates, state, ctx) -> ServerState:
        if not updates:
            return state
        if self.share != "local" and state.params.numel():
            w = size_weights(updates).to(state.params.dtype)
            state.params = state.params + (w / w.sum()) @ stack_deltas(updates)
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state


class PLoRAClient(ClientAlgorithm):
    """The standard trainer on the adapters; with ``a_init: per_client`` a client's first
    job starts from its own A (a client that never trained is scored with the shared A);
    with ``dynamic`` it starts from the blend of the global and its own B (see above)."""

    stateful = True

    def __init__(self, objective: str = "plain", mu: float = 0.0, a_init: str = "shared", seed: int = 0,
                 dynamic: bool = False, temperature: float = 0.1):
        super().__init__(objective, mu)
        self.a_init = a_init
        self.seed = seed
        self.dynamic, self.temperature = dynamic, temperature

    def train(self, job, worker, generator):
        if self.a_init == "per_client" and "personal" not in (job.state or {}):
            with torch.no_grad():
                per_client_a(worker.model, self.seed, job.client_id)
        if not self.dynamic:
            return super().train(job, worker, generator)
        own = (job.state or {}).get("b_own")
        lam = 0.0
        if own is not None:
            model, idx = worker.model, worker.data.client_train[job.client_id]
            x, y = worker.data.x[idx], worker.data.y[idx]
            with torch.no_grad():
                global_b = model.params.clone()
                loss_global = worker.task.evaluate(model.module, x, y)["loss"]
                model.params.copy_(own)
                loss_own = worker.task.evaluate(model.module, x, y)["loss"]
                lam = dynamic_weight(loss_global, loss_own, self.temperature)
                model.params.copy_(blend(global_b, own, lam))
        result = super().train(job, worker, generator)
        result.state = {**(result.state or {}), "b_own": worker.model.params.clone(), "lambda": lam}
        return result

    @torch.no_grad()
    def personalize(self, model, broadcast, state, initial) -> None:
        super().personalize(model, broadcast, state, initial)
        if self.dynamic and state and "b_own" in state:
            model.params.copy_(blend(broadcast.params, state["b_own"], state["lambda"]))


def dynamic_weight(loss_global: float, loss_own: float, temperature: float) -> float:
    """λ = σ((L_global − L_own) / τ): how much of its own B a client keeps."""
    return 1.0 / (1.0 + math.exp(-(loss_global - loss_own) / temperature))


def blend(global_b: torch.Tensor, own_b: torch.Tensor, lam: float) -> torch.Tensor:
    """B̄ + λ (B_own − B̄)."""
    return global_b + lam * (own_b - global_b)


def _build(config, params: PLoRAParams):
    if params.freeze_a and params.a_init == "per_client":
        raise ConfigError("method.freeze_a keeps the shared initial A; it cannot be combined with a_init: per_client.")
    if params.dynamic and params.share != "B":
        raise ConfigError(f"method.dynamic blends the global and the client's own B, which needs share: B (pLoRA); "
                          f"share: {params.share!r} has no per-client B to blend.")
    return PLoRAStrategy(params.share), PLoRAClient(config.client.objective, config.client.mu, params.a_init,
                                                    config.seed, params.dynamic, params.temperature)


def setup_plora(exp) -> None:
    """Set-up: pLoRA trains LoRA adapters on the configured (frozen) model."""
    cfg = exp.config
    p = _params(cfg)
    probe = exp.model_factory()
    targets = select_targets(probe, p.target, f"model {cfg.model.name!r}")
    factory = LoRAModelFactory(exp.model_factory, tuple(targets), p.rank, p.alpha, p.dropout, cfg.seed)
    roles = lora_roles(p.share, p.freeze_a, dict(exp.roles))
    flat = FlatModel(factory(), roles)
    if p.share != "local" and flat.spec.num_params == 0:
        raise ConfigError(f"pLoRA with share {p.share!r} leaves nothing to average under model.roles {exp.roles}.")
    if cfg.client.objective == "prox" and p.share == "local":
        raise ConfigError("client.objective prox pulls towards a global model; share: local has none to pull towards.")
    exp.use_model(factory, flat, roles)


METHOD = register(
    MethodInfo(
        name="plora",
        summary="personalized LoRA (peft): server averages B, clients keep A; share both = FedAvg-LoRA, local = no FL",
        citation="Mitra et al., FedVLM / pLoRA, ECAI 2025 (arXiv 2507.17088)",
        build=_build,
        params=PLoRAParams,
        setup=setup_plora,
    )
)
