"""FedASMU — Liu, Jia, Che, Huo, Ren, Zhou, Dai & Dou, "FedASMU: Efficient Asynchronous
Federated Learning with Dynamic Staleness-aware Model Update", AAAI 2024
(arXiv:2312.05770); journal extension: Jia, Liu, Huo, Shen, Zhou, Dai & Dou, "Efficient
Federated Learning with Timely Update Dissemination" (arXiv:2507.06031). No official code
was found. The equations follow the project's notes (METHODS.md, marked unverified).

Where the defaults come from: **not from the paper**. The meaning of t, the initial λ, σ,
ι, γ, υ, the meta step sizes and the fetch point are our choices, stated as such below.
The results page (docs/results/async.md, "FedASMU vs the paper's claim") shows the
sensitivity to them: to ι (the parameter that sets α once λ/√t has decayed) in the variant
table, and to ``server_meta_lr``, ``meta_clip``, ``lambda_init``, ``sigma_init``,
``fetch_at``, ``gamma_init``, ``upsilon_init``, one at a time, in its table "Sensitivity to
FedASMU's other defaults" (μ, μ_β and ``device_meta_lr`` were not varied). In short (3
seeds, paired by seed): on mnist5k none of them moves accuracy beyond the seed spread; on
Synthetic the server's meta step does (``server_meta_lr`` 0.01: −2.1 points, 1: +2.9;
``meta_clip`` 0.01: −2.4), the others do not.

What was searched, on 2026-12-02, with this project's search tools (stored copies of web
pages, documentation, GitHub issues and a GitHub code index; no live web):

* Full text. The stored copies of https://arxiv.org/html/2507.06031v1 and
  https://ar5iv.labs.arxiv.org/html/2312.05770 are reachable only from their opening
  (title, authors, abstract, the first lines of the introduction); thirteen queries of
  the page store (English and Chinese, the symbols λ σ ι ξ, the authors' names, "dynamic
  model aggregation", "time slot", "fresh global model"), eight of the documentation,
  code and issue stores and ten exact-string look-ups returned no passage of either
  method section. The AAAI proceedings page (doi:10.1609/
  aaai.v38i12.29297), web3.arxiv.org/abs/2507.06031 and aggregator pages (bohrium, arxivlens,
  newx.sg, arxiver) carry the abstract only, as does /work/shared/seeds/.
* Official code. No repository named like "fedasmu"; the code index finds the name only
  in two third-party re-implementations, CyberStaZJU/dirbridge-response
  (algorithm/fedasmu.py, models/local_update.py, utils/options.py) and
  wangpengyu2004/AFVLM_CM (code/afl_vlm/methods/fedasmu.py). Both call themselves
  adaptations, replace the paper's loss-gradient meta step by a heuristic step driven by
  a change of loss, and disagree with each other (staleness term τ^(σ/2) with
  τ = V − v + 1, versus (V − v + 1)^σ; initial σ 1 versus 0.5; ι 0 in both; meta step
  0.01 in both). AFVLM_CM's docstring cites "paper Eq. (1)" for α = μξ/(1+μξ) and
  "Eq. (2)" for ξ, the form used here; neither gives a value it attributes to the paper,
  so none of their numbers is adopted.
* The one method-level detail reached is a blog note on the AAAI paper
  (http://coloradmin.cn/o/2168493.html): the device's fetch time is chosen per epoch by
  an "intelligent time slot selector" (an LSTM meta model on the server, Q-learning with
  ε-greedy actions add/stay/minus on each device, reward = loss change across the merge).
  That is the adaptive fetch our fixed ``fetch_at`` replaces (see Decisions).

Server (every arrival is merged at once, ``schedule.mode: async``). Device i's model
w_i, trained from global version v, arrives when the server is at version V:

    τ = V − v,   t = V + 1                      (t counts global versions, not seconds: ours)
    ξ = λ_i / (√t · (τ + 1)^σ_i) + ι_i
    α = μ ξ / (1 + μ ξ)                          ∈ [0, 1)
    w_g ← (1 − α) w_g + α w_i

* τ + 1 instead of τ: τ = 0 (nothing merged meanwhile) would make τ^σ zero and ξ
  infinite; with τ + 1 a fresh update gets ξ = λ/√t + ι.
* λ_i, σ_i, ι_i are per device, kept as raw values r with λ = softplus(r_λ) etc. (so
  they are positive), but **stepped in their own units**: projected gradient descent
  on the values, v ← max(v − η_meta·clip(∂L/∂v), 1e-6), then r = softplus⁻¹(v). A step
  on the raw values would be scaled by the softplus slope sigmoid(r) ≈ 0.095 at ι = 0.1,
  which (with ∂α/∂λ ∝ 1/√t) left the parameters where they started and α at the ι floor
  μι/(1+μι).
* Learned by a meta-gradient on the global loss L. At device i's merge the server keeps
  u_i = w_i − w_g (so ∂w_merged/∂α = u_i) and ∂α/∂(λ, σ, ι). When device i's *next*
  upload arrives, its delta Δ_next (from the model it started from) gives the gradient of
  L near the merged model, g ≈ −Δ_next / (η · steps) with η = ``ctx.round_lr`` (exact
  for one plain-SGD step on the global loss; an approximation otherwise: several local
  steps, the device's own non-IID loss, later merges in between, momentum). Then

      ∂L/∂α ≈ g · u_i,        v_i ← max(v_i − clip(η_meta · (g · u_i) ∂α/∂v_i), 1e-6)

  each coordinate of the step clipped to ±``meta_clip`` (in the parameter's own units).
  The meta step needs two consecutive uploads of the same device, so the server stores
  one model-sized vector per device that has uploaded, kept in the server's per-client
  store (`ctx.client_store`), which `executor.state_memory_mb` bounds (spilling to disk)
  and checkpoints snapshot.
* Uploads staler than ``schedule.max_staleness`` are dropped by the engine before the
  strategy sees them (the paper's staleness bound).

Device. Part-way through local training the device fetches the newest global model
w_g′ (``fetch_fraction``: the engine delivers it as ``job.fetched`` at that share of the
job's compute time) and merges

    β = μ_β φ / (1 + μ_β φ),    φ = max(0, γ_i/√t · (1 − υ_i/√(t − t_start + 1)))
    w ← (1 − β) w + β w_g′

with t = (fetched version) + 1 and t_start = (version the job started from) + 1, so
t − t_start is the number of global versions merged while the device trained. γ_i, υ_i
(kept like λ, σ, ι, in the client state) are learned on the device from the first
minibatch after the merge: with g₁ the gradient of the local loss there,
∂L/∂β ≈ g₁ · (w_g′ − w_before), and the same projected step on (γ, υ) with
``device_meta_lr``. The merged-in β is applied to the current job; the learned values
serve the device's next job.

Defaults (all ours, see above; sensitivity on the results page): μ = μ_β = 1, λ = γ = 1,
σ = 0.5, ι = 0.1, υ = 0.5, η_meta = 0.1 on both sides, ``meta_clip`` = 0.1; ``fetch_at`` = 0.5.

Decisions:

* The fetch point is fixed (``fetch_at``, share of the local steps, default 0.5),
  decided at dispatch so the simulator knows the segment durations; the paper adapts
  the fetch time per device, which is not implemented.
* No merge when no newer global model exists at the fetch (fetched version = start
  version): merging with the model training started from would only undo local steps.
  The fetch is still made and counted in the downlink by the simulator's timing.
* The local optimizer's state (momentum, Adam moments) restarts after the merge: the
  job is trained as two segments with ``local_train``; the batch order reshuffles at the
  segment boundary.
* The upload's ``base_version`` stays the version the job started from (staleness is
  measured from there, conservatively); its delta includes the merge jump, so the
  server's meta-gradient g sees it too (an approximation).
* Uploads are full models (``upload_full_model``); float buffers are mixed with α (server)
  and β (device).
* Ablations: ``learn_server: false`` / ``learn_device: false`` keep the initial
  parameters fixed; ``device_merge: false`` turns the fetch off (server side only).

Observed behaviour: with t counting versions, λ/√t soon falls below ι, so α is set by ι
(and by how far the meta step moves it). Under non-IID data the meta-gradient's proxy g
(the device's own next update) points towards the device's optimum, so g · u_i < 0 and
the rule tends to raise α for every device: it lowers the device's loss, not
necessarily the global one. See docs/results/async.md for the measured figures.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from pydantic import Field

from ..aggregate.staleness import staleness
from ..core.client import ClientAlgorithm, JobResult
from ..core.strategy import ServerState
from ..train import local_train
from .merge import MergeStrategy, mix
from .registry import MethodInfo, MethodParams, register


class FedASMUParams(MethodParams):
    mu: float = Field(1.0, gt=0, description="server: α = μξ/(1+μξ)")
    lambda_init: float = Field(1.0, gt=0, description="initial λ_i (server)")
    sigma_init: float = Field(0.5, gt=0, description="initial σ_i (server, staleness exponent)")
    iota_init: float = Field(0.1, gt=0, description="initial ι_i (server, floor of ξ)")
    learn_server: bool = Field(True, description="learn λ, σ, ι by the meta-gradient (false: fixed-weight ablation)")
    server_meta_lr: float = Field(0.1, gt=0, description="step size of the server meta-gradient")
    device_merge: bool = Field(True, description="fetch and merge the fresh global model during local training")
    fetch_at: float = Field(0.5, gt=0, lt=1, description="share of local steps after which the device fetches")
    mu_beta: float = Field(1.0, gt=0, description="device: β = μ_β φ/(1+μ_β φ)")
    gamma_init: float = Field(1.0, gt=0, description="initial γ_i (device)")
    upsilon_init: float = Field(0.5, gt=0, description="initial υ_i (device)")
    learn_device: bool = Field(True, description="learn γ, υ on the device (false: fixed-weight ablation)")
    device_meta_lr: float = Field(0.1, gt=0, description="step size of the device meta-gradient")
    meta_clip: float = Field(0.1, gt=0, description="largest change of λ, σ, ι (γ, υ) per meta step, in their own units")


def softplus(r: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(r)


def inverse_softplus(v: float) -> float:
    """r with softplus(r) = v (v > 0)."""
    return v + math.log(-math.expm1(-v))


# -- the server weight ------------------------------------------------------------------


def server_alpha(raw: torch.Tensor, t: int, tau: int, mu: float) -> tuple[float, torch.Tensor]:
    """α and ∂α/∂raw for raw = (r_λ, r_σ, r_ι) (float64 [3])."""
    lam, sig, iota = softplus(raw).tolist()
    dsp = torch.sigmoid(raw)  # d softplus / d raw
    root_t = math.sqrt(t)
    decay = (tau + 1.0) ** sig
    xi = lam / (root_t * decay) + iota
    alpha = mu * xi / (1.0 + mu * xi)
    dalpha_dxi = mu / (1.0 + mu * xi) ** 2
    dxi = torch.tensor([1.0 / (root_t * decay), -lam * math.log(tau + 1.0) / (root_t * decay), 1.0], dtype=torch.float64)
    return alpha, dalpha_dxi * dxi * dsp


def device_beta(raw: torch.Tensor, t: int, elapsed: int, mu_beta: float) -> tuple[float, torch.Tensor]:
    """β and ∂β/∂raw for raw = (r_γ, r_υ) (float64 [2]); ``elapsed`` = t − t_start ≥ 0."""
    gamma, upsilon = softplus(raw).tolist()
    dsp = torch.sigmoid(raw)
    root_t, root_s = math.sqrt(t), math.sqrt(elapsed + 1.0)
    phi = gamma / root_t * (1.0 - upsilon / root_s)
    if phi <= 0.0:
        return 0.0, torch.zeros(2, dtype=torch.float64)
    beta = mu_beta * phi / (1.0 + mu_beta * phi)
    dbeta_dphi = mu_beta / (1.0 + mu_beta * phi) ** 2
    dphi = torch.tensor([(1.0 - upsilon / root_s) / root_t, -gamma / (root_t * root_s)], dtype=torch.float64)
    return beta, dbeta_dphi * dphi * dsp


def _clip(step: torch.Tensor, limit: float) -> torch.Tensor:
    return step.clamp(-limit, limit)


PARAM_FLOOR = 1e-6  # the projection's lower bound (softplus⁻¹(0) is −∞)


def projected_step(raw: torch.Tensor, dloss_draw: torch.Tensor, lr: float, clip: float) -> torch.Tensor:
    """One projected gradient step on the values v = softplus(raw), returned as raw values.

    ``dloss_draw`` is ∂L/∂raw; dividing by the softplus slope sigmoid(raw) gives ∂L/∂v, so
    the step is taken in the parameters' own units, not shrunk by the slope.
    """
    values = softplus(raw)
    dloss_dv = dloss_draw / torch.sigmoid(raw)
    new = (values - _clip(lr * dloss_dv, clip)).clamp_min(PARAM_FLOOR)
    mapped = torch.tensor([inverse_softplus(float(v)) for v in new], dtype=torch.float64)
    return torch.where(new == values, raw, mapped)  # an unmoved parameter keeps its exact raw value


class FedASMUStrategy(MergeStrategy):
    name = "fedasmu"

    def __init__(self, p: FedASMUParams):
        self.p = p

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        p = self.p
        raw0 = torch.tensor([inverse_softplus(p.lambda_init), inverse_softplus(p.sigma_init), inverse_softplus(p.iota_init)],
                            dtype=torch.float64)
        state.extra["raw"] = raw0.repeat(ctx.num_clients, 1)  # [N, 3]: r_λ, r_σ, r_ι per device
        state.extra["dalpha"] = torch.zeros(ctx.num_clients, 3, dtype=torch.float64)  # ∂α/∂r at the last merge
        return state

    def meta_step(self, update, state: ServerState, ctx) -> torch.Tensor | None:
        """The new raw row of the device after the feedback of its previous merge (None: none)."""
        cid = update.client_id
        u = (ctx.client_store.get(cid) or {}).get("fedasmu_u")  # w_i − w_g at its last merge
        lr = ctx.round_lr
        if u is None or update.num_steps <= 0 or not lr > 0:
            return None
        g = -update.delta.to(torch.float64) / (lr * update.num_steps)
        dl_dalpha = float(g @ u.to(torch.float64))
        return projected_step(state.extra["raw"][cid], dl_dalpha * state.extra["dalpha"][cid],
                              self.p.server_meta_lr, self.p.meta_clip)

    def on_update(self, update, state: ServerState, ctx) -> ServerState:
        cid = update.client_id
        raw = state.extra["raw"]
        extra = dict(state.extra)
        if self.p.learn_server:
            new_row = self.meta_step(update, state, ctx)
            if new_row is not None:
                raw = raw.clone()  # never in place: the engine's snapshots share tensors
                raw[cid] = new_row
                extra["raw"] = raw
        tau = staleness(update, state)
        t = state.version + 1
        alpha, dalpha = server_alpha(raw[cid], t, tau, self.p.mu)
        x_new = update.params if update.params is not None else state.params + update.delta
        u = x_new.to(state.params.dtype) - state.params
        state.params = state.params + alpha * u
        if update.buffers is not None and state.buffers.numel():
            state.buffers = mix(state.buffers, update.buffers, alpha)
        if self.p.learn_server:
            # one model-sized vector per device: kept in the server's bounded per-client store
            ctx.client_store.put(cid, {**(ctx.client_store.get(cid) or {}), "fedasmu_u": u})
            d = state.extra["dalpha"].clone()
            d[cid] = dalpha
            extra["dalpha"] = d
        extra["alpha_t"] = alpha
        if "merge_beta" in update.metrics:
            extra["beta_last"] = float(update.metrics["merge_beta"])
        state.extra = extra
        state.version += 1
        return state

    def metrics(self, state: ServerState) -> dict[str, float]:
        out = {}
        if "alpha_t" in state.extra:
            out["alpha_t"] = state.extra["alpha_t"]
        if "beta_last" in state.extra:
            out["merge_beta"] = state.extra["beta_last"]
        vals = softplus(state.extra["raw"]).mean(dim=0).tolist()
        out.update(lambda_mean=vals[0], sigma_mean=vals[1], iota_mean=vals[2])
        return out


class FedASMUClient(ClientAlgorithm):
    """Local training in two segments around the merge with the fetched global model."""

    upload_full_model = True

    def __init__(self, p: FedASMUParams, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.p = p
        self.stateful = p.device_merge and p.learn_device

    def fetch_fraction(self, job) -> float | None:
        return self.p.fetch_at if self.p.device_merge else None

    def _raw(self, job) -> torch.Tensor:
        state = job.state or {}
        if "fedasmu_raw" in state:
            return state["fedasmu_raw"]
        return torch.tensor([inverse_softplus(self.p.gamma_init), inverse_softplus(self.p.upsilon_init)], dtype=torch.float64)

    def train(self, job, worker, generator) -> JobResult:
        if job.fetched is None:
            return super().train(job, worker, generator)
        model = worker.model
        idx = worker.data.client_train[job.client_id]
        total = job.settings.num_steps(len(idx))
        k1 = int(math.floor(self.p.fetch_at * total))
        hooks = self.grad_hooks(job, worker)
        loss_fn = self.loss_fn(job, worker)

        def segment(steps: int, extra_hooks=()):
            settings = dataclasses.replace(job.settings, local_steps=steps, epochs=None)
            return local_train(model, worker.task, worker.data.x, worker.data.y, idx, settings, generator,
                               tuple(extra_hooks) + hooks, loss_fn)

        r1 = segment(k1) if k1 > 0 else None
        raw = self._raw(job)
        elapsed = job.fetched.version - job.broadcast.version
        beta, dbeta = (0.0, None)
        jump = None
        if elapsed > 0:
            beta, dbeta = device_beta(raw, job.fetched.version + 1, elapsed, self.p.mu_beta)
        if beta > 0.0:
            with torch.no_grad():
                jump = job.fetched.params - model.params  # w_g′ − w_before
                model.params.add_(jump, alpha=beta)  # the worker's own model: in place is fine
                if model.buffers.numel() and job.fetched.buffers is not None:
                    model.buffers.mul_(1.0 - beta).add_(job.fetched.buffers, alpha=beta)
        first_grad: list[torch.Tensor] = []
        n = model.params.numel()

        def capture(grad, trained):
            if not first_grad:
                first_grad.append(grad[:n].clone())

        r2 = segment(total - k1, (capture,) if jump is not None else ()) if total - k1 > 0 else None
        new_raw = raw
        if self.p.learn_device and jump is not None and first_grad:
            dl_dbeta = float(first_grad[0].to(torch.float64) @ jump.to(torch.float64))
            new_raw = projected_step(raw, dl_dbeta * dbeta, self.p.device_meta_lr, self.p.meta_clip)
        parts = [r for r in (r1, r2) if r is not None and r.steps > 0]
        steps = sum(r.steps for r in parts)
        processed = sum(r.examples_processed for r in parts)
        loss = sum(r.mean_loss * r.steps for r in parts) / steps if steps else float("nan")
        update = self.build_update(job, worker, steps, {"loss": loss, "merge_beta": beta})
        state = {**(job.state or {}), "fedasmu_raw": new_raw} if self.stateful else None
        return JobResult(update, state, processed)


def _build(config, params: FedASMUParams):
    return FedASMUStrategy(params), FedASMUClient(params, config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fedasmu",
        summary="async: learned staleness-aware merge weight α (server) + mid-training merge with the fresh model (device)",
        citation="Liu et al., AAAI 2024 (arXiv:2312.05770)",
        build=_build,
        params=FedASMUParams,
        modes=("async",),
    )
)
