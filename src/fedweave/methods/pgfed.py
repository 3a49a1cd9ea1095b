"""PGFed — Luo & Wu, "PGFed: Personalize Each Client's Global Objective for
Federated Learning", ICCV 2023 (official code: github.com/ljaiverson/pgfed).

Each client i minimises a *personalized global objective*: its own risk plus a learned,
non-negative combination of first-order estimates of the other clients' risks,

    F_i(θ) = f_i(θ) + μ Σ_j a_ij [ f_j(θ_j) + ⟨g_j, θ − θ_j⟩ ],   g_j = ∇f_j(θ_j),

so the local gradient is ∇f_i(θ) + c_i with the correction c_i = μ Σ_j a_ij g_j, and the
weights follow projected gradient steps a_ij ← max(0, a_ij − λ ∂F_i/∂a_ij).

**This module follows the official code** (``clientpgfed.py`` / ``serverpgfed.py``), which
differs from the paper's notation in three places:

1. the sums over j run over the *previous round's uploaders* only (server state is
   O(K·P) gradients plus the N×N matrix a, not O(N·P); the rows of a live in the server's
   per-client store, which ``executor.state_memory_mb`` bounds);
2. the server's mean gradient already includes μ: ḡ = (μ/K) Σ_{j∈prev} g_j;
3. the a-update uses ḡ for every j instead of g_j (so a client needs one extra vector,
   not K):  a_ij ← max(0, a_ij − λ (μ ℓ⁻_j + ⟨θ, ḡ⟩)),  ℓ⁻_j = f_j(θ_j) − ⟨g_j, θ_j⟩,
   taken at *every local step* with the current local θ, while c_i stays fixed for the round.

Round t, client i (selected):

    receive θ_G, and if there were uploaders in round t−1: c_i = μ Σ_j a_ij g_j, ḡ,
            μ ℓ⁻_j and a_ij for j ∈ prev                          (downlink payload)
    PGFedMo: c_i ← (1 − β) c_i + β c_i^old  (the client's last c; β = method.beta, 0.5)
    from θ = θ_G, every step:  g ← ∇f_i(θ) + c_i;  a_i ← max(0, a_i − λ(μℓ⁻ + ⟨θ, ḡ⟩));  θ ← step(θ, g)
    then, at the trained θ_i, one pass over its data: g_i = mean over minibatches of the
    minibatch-mean-loss gradient, ℓ⁻_i = (mean training loss) − ⟨g_i, θ_i⟩
    send θ_i (as a delta), g_i, ℓ⁻_i and a_i                        (uplink payload)

Server: θ_G ← Σ_k n_k θ_k / Σ_k n_k; a[k, prev] ← uploaded a_k; the uploaders of this round
become ``prev`` (their g_j and μℓ⁻_j kept; ḡ = (μ/K) Σ g_j over the K that arrived — the
official code divides by the number selected, the same without drop-outs). a starts at 1/K
(K = schedule.clients_per_round), as in the code. The first round has no correction.

Personalized model: θ_i, the client's model after its last local training, kept in the
client state (the official code evaluates each client's own model); a client that never
trained is scored with the global model. ``pgfed`` is β = 0; ``pgfedmo``
(:mod:`fedweave.methods.pgfedmo`) is PGFed with ``beta`` 0.5. Defaults μ = 0.1, λ = 0.01 (the README's CIFAR-10 command). The official code
uses SGD with momentum 0.9 for every method; fedweave uses the run's ``client`` settings
for all methods alike. All extra vectors and scalars travel as payload and are counted in
bytes (uplink +P floats and K+1 scalars, downlink +2P floats and 2K scalars). The gradient
pass after training is extra local work that the virtual clock does not charge. The
corrections cover the shared trainable vector (personal segments, if any, get none).
Synchronous mode only: a and prev refer to rounds.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..core.client import ClientAlgorithm, JobResult
from ..core.errors import ConfigError
from ..core.messages import Broadcast
from ..core.strategy import ServerState, Strategy, average_buffers, size_weights, stack_deltas
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, MethodParams, register


class PGFedParams(MethodParams):
    mu: float = Field(0.1, ge=0, description="μ: weight of the other clients' risk estimates")
    lam: float = Field(0.01, ge=0, description="λ: step size of the a_ij updates")
    beta: float = Field(0.0, ge=0, lt=1, description="momentum on the correction c_i (PGFedMo: 0.5)")


class PGFedStrategy(Strategy):
    name = "pgfed"
    modes = ("sync",)

    def __init__(self, mu: float, clients_per_round: int):
        self.mu = mu
        self.k = clients_per_round

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        # the a-matrix lives row by row in the server's bounded per-client store (rows
        # nobody has updated are the initial 1/K): N² scalars would not scale to many clients
        state.extra.update(
            prev_ids=torch.zeros(0, dtype=torch.long),
            prev_grads=torch.zeros(0, params.numel(), dtype=params.dtype),
            prev_loss_minus=torch.zeros(0, dtype=params.dtype),  # μ ℓ⁻_j
            mean_grad=torch.zeros_like(params),  # ḡ = (μ/K) Σ g_j
        )
        return state

    def a_row(self, cid: int, ctx, dtype) -> torch.Tensor:
        """Client ``cid``'s row of the a-matrix (a_ij over every client j)."""
        row = (ctx.client_store.get(cid) or {}).get("pgfed_a")
        return row if row is not None else torch.full((ctx.num_clients,), 1.0 / self.k, dtype=dtype)

    def client_payload(self, cid: int, state: ServerState, ctx) -> dict:
        ids = state.extra["prev_ids"]
        if len(ids) == 0:
            return {}
        a = self.a_row(cid, ctx, state.params.dtype)[ids].clone()
        return {
            "c": self.mu * (a @ state.extra["prev_grads"]),
            "mean_grad": state.extra["mean_grad"],
            "loss_minus": state.extra["prev_loss_minus"],
            "a": a,
        }

    def configure(self, client_ids, state, ctx):
        base = Broadcast(state.version, state.params, state.buffers)
        return {cid: base.with_payload(**self.client_payload(cid, state, ctx)) for cid in client_ids}

    def aggregate(self, updates, state, ctx) -> ServerState:
        if not updates:
            return state
        w = size_weights(updates).to(state.params.dtype)
        state.params = state.params + (w / w.sum()) @ stack_deltas(updates)
        state.buffers = average_buffers(updates, state)
        prev = state.extra["prev_ids"]
        dtype = state.params.dtype
        for u in updates:
            if "a" in u.payload and len(prev):
                row = self.a_row(u.client_id, ctx, dtype).clone()  # new tensors: snapshots share the old
                row[prev] = u.payload["a"].to(dtype)
                ctx.client_store.put(u.client_id, {**(ctx.client_store.get(u.client_id) or {}), "pgfed_a": row})
        grads = torch.stack([u.payload["grad"] for u in updates])
        ids = torch.tensor([u.client_id for u in updates], dtype=torch.long)
        state.extra.update(
            a_mean=float(torch.stack([self.a_row(i, ctx, dtype)[ids] for i in ids.tolist()]).mean()),
            prev_ids=ids,
            prev_grads=grads,
            prev_loss_minus=self.mu * torch.tensor([float(u.payload["loss_minus"]) for u in updates], dtype=grads.dtype),
            mean_grad=self.mu * grads.mean(dim=0),
        )
        state.version += 1
        return state

    def metrics(self, state) -> dict:
        return {"pgfed_a_mean": state.extra["a_mean"]} if "a_mean" in state.extra else {}


class PGFedClient(ClientAlgorithm):
    stateful = True

    def __init__(self, lam: float, beta: float, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.lam = lam
        self.beta = beta

    def correction(self, job) -> torch.Tensor | None:
        """c_i for this round: the server's, blended with the client's last one (PGFedMo)."""
        c = job.broadcast.payload.get("c")
        old = (job.state or {}).get("c_prev")
        if c is not None and self.beta > 0 and old is not None:
            c = (1 - self.beta) * c + self.beta * old
        return c

    def pgfed_hook(self, c: torch.Tensor, mean_grad: torch.Tensor, loss_minus: torch.Tensor, a: torch.Tensor):
        """Every step: g += c_i, then a_i ← max(0, a_i − λ(μℓ⁻ + ⟨θ, ḡ⟩)) at the current θ (in place on ``a``)."""
        n = c.numel()
        lam = self.lam

        def hook(grad: torch.Tensor, trained: torch.Tensor) -> None:
            grad[:n].add_(c)
            dot = torch.dot(trained[:n], mean_grad)
            a.sub_(lam * (loss_minus + dot)).clamp_(min=0.0)

        return hook

    def train(self, job, worker, generator):
        from ..train import local_train

        model = worker.model
        idx = worker.data.client_train[job.client_id]
        p = job.broadcast.payload
        c = self.correction(job)
        hooks = self.grad_hooks(job, worker)
        a = None
        if c is not None:
            a = p["a"].clone()
            hooks = hooks + (self.pgfed_hook(c, p["mean_grad"], p["loss_minus"], a),)
        result = local_train(model, worker.task, worker.data.x, worker.data.y, idx, job.settings, generator, hooks)
        grad, mean_loss, processed = full_gradient(model, worker.task, worker.data.x, worker.data.y, idx,
                                                   job.settings.batch_size)
        payload = {"grad": grad, "loss_minus": mean_loss - float(torch.dot(grad, model.params))}
        if a is not None:
            payload["a"] = a
        update = self.build_update(job, worker, result.steps, {"loss": result.mean_loss}, payload)
        state = {**(job.state or {}), "theta": model.params.clone(), "theta_buffers": model.buffers.clone()}
        if c is not None and self.beta > 0:
            state["c_prev"] = c
        return JobResult(update, state, result.examples_processed + processed)

    @torch.no_grad()
    def personalize(self, model, broadcast, state, initial) -> None:
        super().personalize(model, broadcast, state, initial)
        if state and "theta" in state:
            model.params.copy_(state["theta"])
            if model.buffers.numel():
                model.buffers.copy_(state["theta_buffers"])


def full_gradient(model, task, x, y, idx, batch_size: int) -> tuple[torch.Tensor, float, int]:
    """At the current parameters: (mean over minibatches of the minibatch-mean-loss gradient
    of the shared vector, example-weighted mean loss, examples processed), in data order.
    The module stays in training mode (as in the official code); float buffers that the pass
    would move (BatchNorm statistics) are restored."""
    n_shared = model.params.numel()
    if len(idx) == 0:
        return torch.zeros_like(model.params), 0.0, 0
    saved = model.flat.clone() if (model.buffers.numel() or model.personal_buffers.numel()) else None
    module = model.module
    module.train()
    model.zero_grad()
    total, batches = 0.0, 0
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        loss = task.loss(module(x.index_select(0, b)), y.index_select(0, b))
        loss.backward()
        total += float(loss.detach()) * len(b)
        batches += 1
    grad = model.grad[:n_shared] / batches
    model.zero_grad()
    if saved is not None:
        with torch.no_grad():
            model.flat.copy_(saved)
    return grad, total / len(idx), len(idx)


#: g_i (like the trainable vector), ℓ⁻_i (a number) and a_i (the row the task sent,
#: projected onto a ≥ 0); PGFedMo uploads the same
PGFED_UPLOADS = PayloadSchema((
    Entry("grad", ("params",), what="the client's full gradient g_i"),
    Entry("loss_minus", what="PGFed's loss offset"),
    Entry("a", "broadcast:a", minimum=0.0, what="the client's updated a_ij"),
))


def build_pgfed(config, p):
    """(strategy, client) of PGFed or PGFedMo, from their parameters ``p``."""
    if config.schedule.sampling == "poisson":
        raise ConfigError("PGFed initialises a_ij to 1/K with K = schedule.clients_per_round; use uniform or weighted sampling.")
    return (PGFedStrategy(p.mu, config.schedule.clients_per_round),
            PGFedClient(p.lam, p.beta, config.client.objective, config.client.mu))


METHOD = register(
    MethodInfo(
        name="pgfed",
        summary="personalized global objectives: gradient correction μΣ_j a_ij g_j, learned a_ij (method.mu, lam)",
        citation="Luo & Wu, ICCV 2023",
        build=build_pgfed,
        params=PGFedParams,
        payload_schema=PGFED_UPLOADS,
    )
)
