"""Ferret — Shu, Hu, Ng, Low & Yu, "Ferret: Federated Full-Parameter Tuning at Scale for
Large Language Models", arXiv 2409.06277, 2024 (official code allen4747/Ferret, read for
the conventions noted below). Full-parameter federated training whose uplink is a few
random-projection coefficients per block, reconstructed on the server from shared
randomness.

**Client.** From the global model θ₀ it runs the standard local trainer (τ steps:
``client.local_steps`` or ``client.epochs``; the paper uses first-order steps too) and
forms Δ = θ₀ − θ_τ over the shared trainable vector. The vector is cut into consecutive
blocks of ``method.block_size`` entries (the last one shorter). For block b of size d_b
and n = ``method.num_vectors``, it draws the basis

    V_b = G_b / √n,    G_b ∈ R^{n × d_b} with i.i.d. N(0, 1) entries,

and uploads the coefficients γ_b = V_b Δ_b ∈ R^n. Blocks with d_b ≤ n are sent as they are
(projection would not compress them). G_b comes from a CPU ``torch.Generator`` seeded with
``derive_seed(seed, "ferret", version, b)`` — the run seed, the version of the global model
the client started from (the round, in sync mode) and the block index — drawn with
``torch.randn`` in the model's dtype. Client and server therefore draw bit-identical bases,
in any process, thread count or machine (the generator always runs on the CPU; a GPU
model would move the basis to its device afterwards, never draw it there).

**Server.** With size weights p_k = n_k / Σ n_k it averages the coefficients,
Γ_b = Σ_k p_k γ_{k,b} (every client of a round shares the basis, so one reconstruction
serves the cohort), regenerates V_b, reconstructs Δ̂_b = V_bᵀ Γ_b and applies

    θ ← θ − η_s Δ̂,    η_s = ``method.server_lr`` (default 1).

**Why this scale is unbiased.** E[V_bᵀ V_b] = Σ_{i=1}^{n} E[g_i g_iᵀ] / n = I, so
E[Δ̂_b] = E[V_bᵀ V_b] Δ_b = Δ_b: the reconstruction is unbiased for any n, and so is the
aggregate (it is linear in the coefficients). Its error is large, though:
E‖Δ̂_b − Δ_b‖² = (d_b + 1)/n · ‖Δ_b‖² (fourth moments of the Gaussian), i.e. each round
adds noise √((d_b+1)/n) times the size of the update; it averages out across rounds, not
across the clients of a round (they share the basis). ``method.server_lr`` below 1 trades
speed for less of that noise. ``tests/test_method_ferret.py`` checks the unbiasedness
(the mean of Δ̂ over many seeds tends to Δ).

**Communication.** The uplink carries Σ_b min(n, d_b) coefficients instead of P
parameters: about P·n/block_size numbers (the compression ``block_size / num_vectors`` is
reported as ``ferret_compression``). The downlink is the full global model, as for FedAvg:
clients may skip rounds, so they cannot rebuild the model from the coefficients alone.

**Differences from the official code**, all deliberate: (1) bases are standard Gaussian
scaled by 1/√n, giving the unbiased reconstruction above; the official code draws
truncated normals in ±1/√d and multiplies the coefficients by d/n, whose reconstruction has
expectation Δ/3, and makes up for it with a server learning rate (up to 10, annealed) and
per-seed norm clipping; (2) blocks are fixed-size slices of the flat vector (the official
code groups whole tensors to about 0.9× the median tensor size, and spends an adaptive
number of seeds per group in proportion to its update norm); (3) one fresh set of seeds per
(round, block) rather than a fixed pool of K candidate seeds sampled by each client;
(4) no server momentum. Synchronous mode only.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pydantic import Field

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from ..core.messages import Update
from ..core.rng import torch_generator
from ..core.strategy import ServerState, Strategy, average_buffers, size_weights
from .payloads import Entry, PayloadSchema
from .registry import MethodInfo, MethodParams, register


class FerretParams(MethodParams):
    block_size: int = Field(4096, ge=1, description="entries of the flat trainable vector per block (the last block is shorter)")
    num_vectors: int = Field(64, ge=1, description="n: random vectors per block, i.e. coefficients sent per block")


def _params(config) -> FerretParams:
    extras = config.method.extras()
    return FerretParams.model_validate({k: v for k, v in extras.items() if k in FerretParams.model_fields})


# -- shared-randomness projection (pure functions) ------------------------------------------


def blocks(num_params: int, block_size: int) -> list[slice]:
    """Consecutive slices of ``block_size`` entries covering ``num_params``."""
    return [slice(s, min(s + block_size, num_params)) for s in range(0, num_params, block_size)]


def basis(seed: int, version: int, block: int, n: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """V = G / √n, ``[n, d]``, G standard normal from the CPU generator of (seed, version, block)."""
    gen = torch_generator(seed, "ferret", version, block)
    return torch.randn((n, d), generator=gen, dtype=dtype, device=gen.device) / math.sqrt(n)


def num_coefficients(num_params: int, block_size: int, n: int) -> int:
    return sum(min(n, sl.stop - sl.start) for sl in blocks(num_params, block_size))


def project(delta: torch.Tensor, seed: int, version: int, block_size: int, n: int) -> torch.Tensor:
    """The coefficients of ``delta`` (concatenated over blocks): V_b Δ_b, or Δ_b itself where d_b ≤ n."""
    out = []
    for b, sl in enumerate(blocks(delta.numel(), block_size)):
        part = delta[sl]
        d = part.numel()
        if d <= n:
            out.append(part.clone())
        else:
            out.append(basis(seed, version, b, n, d, delta.dtype).to(delta.device) @ part)
    return torch.cat(out) if out else delta.new_zeros(0)


def reconstruct(coeffs: torch.Tensor, seed: int, version: int, num_params: int, block_size: int, n: int) -> torch.Tensor:
    """Δ̂ with Δ̂_b = V_bᵀ γ_b (unbiased: E[V_bᵀ V_b] = I); raw blocks are copied."""
    out = coeffs.new_zeros(num_params)
    at = 0
    for b, sl in enumerate(blocks(num_params, block_size)):
        d = sl.stop - sl.start
        k = min(n, d)
        gamma = coeffs[at : at + k]
        at += k
        if d <= n:
            out[sl] = gamma
        else:
            out[sl] = basis(seed, version, b, n, d, coeffs.dtype).to(coeffs.device).T @ gamma
    if at != coeffs.numel():
        raise ValueError(f"expected {at} Ferret coefficients for {num_params} parameters, got {coeffs.numel()}")
    return out


# -- strategy and client ----------------------------------------------------------------------


class FerretStrategy(Strategy):
    name = "ferret"

    def __init__(self, block_size: int, num_vectors: int, server_lr: float = 1.0):
        self.block_size = block_size
        self.n = num_vectors
        self.server_lr = server_lr

    def aggregate(self, updates, state, ctx) -> ServerState:
        if not updates:
            return state
        w = size_weights(updates)
        w = (w / w.sum()).to(state.params.dtype)
        step = torch.zeros_like(state.params)
        # one reconstruction per base version (a single one in sync mode)
        for version in sorted({u.base_version for u in updates}):
            idx = [i for i, u in enumerate(updates) if u.base_version == version]
            gamma = sum(w[i] * updates[i].payload["coefficients"] for i in idx)
            step += reconstruct(gamma, ctx.seed, version, state.params.numel(), self.block_size, self.n)
        state.params = state.params - self.server_lr * step
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state

    def metrics(self, state) -> dict[str, float]:
        p = state.params.numel()
        return {"ferret_compression": p / max(num_coefficients(p, self.block_size, self.n), 1)}


class FerretClient(ClientAlgorithm):
    """Standard local training; uploads the projection coefficients of Δ = θ₀ − θ_τ."""

    def __init__(self, objective: str, mu: float, seed: int, block_size: int, num_vectors: int):
        super().__init__(objective, mu)
        self.seed = seed
        self.block_size = block_size
        self.n = num_vectors

    def train(self, job, worker, generator):
        out = super().train(job, worker, generator)
        u = out.update
        coeffs = project(-u.delta, self.seed, job.broadcast.version, self.block_size, self.n)
        out.update = Update(
            client_id=u.client_id, base_version=u.base_version, delta=None, buffers=u.buffers,
            num_examples=u.num_examples, num_steps=u.num_steps, metrics=u.metrics,
            payload={**u.payload, "coefficients": coeffs},
        )
        return out


def _build(config, params: FerretParams):
    server_lr = config.method.server_lr if config.method.server_lr is not None else 1.0
    return (FerretStrategy(params.block_size, params.num_vectors, server_lr),
            FerretClient(config.client.objective, config.client.mu, config.seed, params.block_size, params.num_vectors))


_MODEL_POISONING = ("sign_flip", "gaussian", "scaling", "alie", "minmax", "minsum")


def setup_ferret(exp) -> None:
    """Set-up: check Ferret's block size against the model, and refuse features that
    need the clients' deltas (Ferret uploads coefficients only)."""
    cfg = exp.config
    p = _params(cfg)
    size = exp.spec.num_params
    if p.block_size > size:
        raise ConfigError(
            f"method.block_size={p.block_size} is larger than the model: {cfg.model.name!r} has {size} shared trainable "
            f"parameters. Choose a block size of at most {size}."
        )
    if p.num_vectors >= p.block_size:
        raise ConfigError(
            f"method.num_vectors={p.num_vectors} must be smaller than method.block_size={p.block_size}, or the "
            "coefficients are no smaller than the update they stand for."
        )
    blocked: Optional[str] = None
    if cfg.privacy.dp.clip is not None:
        blocked = "privacy.dp (it clips and noises deltas)"
    elif cfg.attack.kind in _MODEL_POISONING:
        blocked = f"attack.kind={cfg.attack.kind} (it rewrites deltas)"
    elif cfg.eavesdropper.probability > 0:
        blocked = "an eavesdropper (it reads deltas or models)"
    if blocked:
        raise ConfigError(f"Ferret uploads projection coefficients, not deltas; it cannot be combined with {blocked}.")


def _coefficient_shape(dims) -> tuple[int]:
    p = _params(dims.config)
    return (num_coefficients(dims.params, p.block_size, p.num_vectors),)


METHOD = register(
    MethodInfo(
        name="ferret",
        summary="full-parameter FL with shared-randomness projection: clients send block coefficients, server rebuilds",
        citation="Shu et al., arXiv 2409.06277 (2024)",
        build=_build,
        params=FerretParams,
        stage_keys=("server_lr",),
        setup=setup_ferret,
        payload_schema=PayloadSchema((Entry("coefficients", _coefficient_shape, what="Ferret's block coefficients"),),
                                     replaces_model=True),
    )
)
