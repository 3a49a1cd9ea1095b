"""FedLAW — Li, Lin, Shang & Wu, "Revisiting Weighted Aggregation in Federated Learning
with Neural Networks", ICML 2023 (official code: ZexiLee/ICML-2023-FedLAW).

The server learns the aggregation of the cohort's models on a small proxy data set it
holds (here the server-held split ``data.server_fraction``, class-balanced and disjoint
from the test split and from every client; the paper uses about 2% of the training data):

    λ = softmax(θ),  θ ∈ R^K,  θ initialised to log(n_k / Σ n_j)   (size weights)
    γ = e^g,         g ∈ R,    g initialised to 0                    (γ = 1)
    min_{θ, g}  ℓ( f(x; γ Σ_k λ_k w_k), y )  over the proxy set       (the task loss)
    w_g ← γ Σ_k λ_k w_k

with Adam (lr 0.01, betas (0.5, 0.999)) for ``server_epochs`` passes (20) over the
proxy set in minibatches of ``server_batch_size`` (128, as the code); w_k = w_g + Δ_k,
and γ Σ_k λ_k w_k is computed as γ (w_g + Σ_k λ_k Δ_k) (equal, since Σ λ = 1). γ < 1 is
the paper's "global weight shrinking", a weight decay of the global model. The learned
λ and γ of the last round are reported in every evaluation record (``fedlaw_gamma``,
``fedlaw_weights``). ``learn_weights: false`` freezes λ at the size weights and
``learn_shrink: false`` freezes γ = 1; both frozen is FedAvg.

Following the code: the "exp" parameterisation (the code also has a "quad" one), one
joint optimisation of θ and g (not the code's SWA variant), the model in train mode
while the proxy loss is minimised (BatchNorm uses batch statistics; the global running
statistics are not changed by it), and Adam's state is fresh every round. The code lowers
the proxy learning rate to 0.005 outside CIFAR-10; here it is ``method.proxy_lr``. Float
buffers (BatchNorm statistics) get the framework's plain example-weighted mean; γ scales
the trainable parameters only. Minibatch order is drawn from ``(seed, "fedlaw", round)``.

FedLAW refuses to run without a proxy set (``data.server_fraction`` = 0) and with a proxy
set smaller than ``min_proxy_examples`` (default: one per class).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.rng import torch_generator
from ..core.strategy import ServerState, Strategy, average_buffers, size_weights, stack_deltas
from ..tasks import make_task
from .needs import MethodNeeds
from .registry import MethodInfo, MethodParams, register


class FedLAWParams(MethodParams):
    server_epochs: int = Field(20, ge=1, description="passes of Adam over the proxy set per round")
    server_batch_size: int = Field(128, ge=1, description="proxy minibatch size")
    proxy_lr: float = Field(0.01, gt=0, description="Adam learning rate for theta and g")
    learn_weights: bool = Field(True, description="learn lambda = softmax(theta); false: size weights")
    learn_shrink: bool = Field(True, description="learn gamma = exp(g); false: gamma = 1")
    min_proxy_examples: int | None = Field(None, ge=1, description="smallest usable proxy set (default: one per class)")


def named_tensors(spec, params: torch.Tensor, buffers: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Name → view of the flat ``params`` (trainable) and ``buffers`` (shared float buffers)."""
    out: dict[str, torch.Tensor] = {}
    for seg in spec.segments:
        if seg.role == "trainable":
            out[seg.name] = params[seg.slice].view(seg.shape)
        elif seg.role == "buffer" and buffers is not None and buffers.numel():
            out[seg.name] = buffers[seg.slice].view(seg.shape)
    return out


class FedLAWStrategy(Strategy):
    name = "fedlaw"

    def __init__(self, params: FedLAWParams, task_kind: str):
        self.p = params
        self.task = make_task(task_kind)
        self.module = None

    def init(self, params, buffers, ctx) -> ServerState:
        data = ctx.server_data
        x = data[0] if data is not None else None
        needed = self.p.min_proxy_examples
        if needed is None:
            labels = data[1] if data is not None else None
            needed = int(labels.max()) + 1 if labels is not None and labels.dim() == 1 and len(labels) else 1
        if x is None or len(x) < needed:
            have = 0 if x is None else len(x)
            raise ConfigError(
                f"FedLAW learns its aggregation on the server's proxy set, which holds {have} examples here; it needs "
                f"at least {needed}. Raise data.server_fraction (the paper uses about 0.02)."
            )
        if ctx.model_factory is None:
            raise ConfigError("FedLAW needs a model on the server to evaluate candidate aggregates (ServerContext.model_factory).")
        self.module = ctx.model_factory()
        for p in self.module.parameters():
            p.requires_grad_(False)
        state = super().init(params, buffers, ctx)
        state.extra["fedlaw_gamma"] = 1.0
        state.extra["fedlaw_weights"] = []
        return state

    def learn(self, global_params, buffers, deltas, sizes, ctx, round_: int) -> tuple[torch.Tensor, float]:
        """(λ [K], γ) learned on the proxy set."""
        from torch.func import functional_call

        n = sizes.to(torch.float64) / sizes.sum()
        theta = torch.log(n).to(global_params.dtype).clone().requires_grad_(self.p.learn_weights)
        g = torch.zeros((), dtype=global_params.dtype, requires_grad=self.p.learn_shrink)
        learned = [t for t, on in ((theta, self.p.learn_weights), (g, self.p.learn_shrink)) if on]
        if learned:
            opt = torch.optim.Adam(learned, lr=self.p.proxy_lr, betas=(0.5, 0.999))
            x, y = ctx.server_data
            gen = torch_generator(ctx.seed, "fedlaw", round_)
            spec = ctx.spec
            frozen_buffers = buffers.clone()
            module = self.module
            module.train()
            bs = self.p.server_batch_size
            for _ in range(self.p.server_epochs):
                order = torch.randperm(len(x), generator=gen)
                for start in range(0, len(x), bs):
                    idx = order[start : start + bs]
                    w = torch.exp(g) * (global_params + torch.softmax(theta, 0) @ deltas)
                    tensors = named_tensors(spec, w, frozen_buffers.clone() if frozen_buffers.numel() else None)
                    loss = self.task.loss(functional_call(module, tensors, (x[idx],)), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        lam = torch.softmax(theta.detach().to(torch.float64), 0) if self.p.learn_weights else n
        return lam, float(torch.exp(g.detach())) if self.p.learn_shrink else 1.0

    def aggregate(self, updates, state: ServerState, ctx) -> ServerState:
        if not updates:
            return state
        deltas = stack_deltas(updates)
        lam, gamma = self.learn(state.params, state.buffers, deltas, size_weights(updates), ctx, state.round)
        with torch.no_grad():
            state.params = gamma * (state.params + lam.to(deltas.dtype) @ deltas)
        state.buffers = average_buffers(updates, state)
        state.extra["fedlaw_gamma"] = gamma
        state.extra["fedlaw_weights"] = [float(v) for v in lam]
        state.version += 1
        return state

    def metrics(self, state) -> dict:
        return {"fedlaw_gamma": state.extra.get("fedlaw_gamma"), "fedlaw_weights": state.extra.get("fedlaw_weights")}


def _build(config, params: FedLAWParams):
    if config.data.server_fraction <= 0:
        raise ConfigError(
            "FedLAW learns its aggregation weights on a server-held proxy set, and data.server_fraction is 0. "
            "Set data.server_fraction (the paper uses about 0.02 of the training data)."
        )
    return FedLAWStrategy(params, config.task.kind), ClientAlgorithm(config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fedlaw",
        summary="learnable aggregation weights and global shrinking factor, fitted on a server proxy set",
        citation="Li et al., ICML 2023",
        build=_build,
        params=FedLAWParams,
        # the weights are fitted on the server's proxy set, evaluating candidate aggregates
        needs=MethodNeeds(server_data=True, server_model=True),
    )
)
