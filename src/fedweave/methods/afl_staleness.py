"""Staleness-aware asynchronous FL (AFL) of the wireless UAM paper: "Wireless-Enabled
Asynchronous Federated Fourier Neural Network for Turbulence Prediction in Urban Air
Mobility (UAM)" (seed page; the abstract introduces "a staleness-aware global
aggregation scheme").

Every arrival from device k is merged at once (``schedule.mode: async``):

    w_g ← w_g + β_k (w_k − w_g),     β_k = (0.5 + e^(−Δt_k / T)) / N

where w_k is the device's new model (uploaded in full), N the number of devices in the
federation (``ctx.num_clients``) and Δt_k the gap between this upload of device k and
its previous one, in **virtual seconds** of the simulator's clock (``ctx.clock.now()``).
A device that uploads often (small gap: its models are fresh) gets up to 1.5/N; one that
has been away long gets down to 0.5/N. For a device's first upload the gap is measured
from the start of the run (virtual time 0, when every device had the initial model).

The time scale T (``method.time_scale_s``). The paper writes e^(−Δt) with Δt in seconds;
in a simulation whose jobs take tens or thousands of virtual seconds e^(−Δt) is 0 for
every upload and β is the constant 0.5/N, so the staleness-awareness silently vanishes.
The default ``auto`` sets T to the running mean of all gaps observed so far (this one
included): the typical device then gets e^(−1) ≈ 0.37, β ≈ 0.87/N, and the weight still
separates fast devices (→ 1.5/N) from slow ones (→ 0.5/N) whatever the units of the
system profile. A number fixes T in virtual seconds (``1.0`` is the paper's literal
formula).

``method.beta_mode: constant`` gives β = 1.5/N for every arrival, what the public
notebook of the paper runs (the upper end of the formula, Δt = 0).

Decisions and what is not reproduced:

* The equation is taken from the project's notes (METHODS.md, marked unverified) and the
  public notebook; the full paper was not available. Float buffers are mixed with the
  same β.
* The paper's task — a 1-D Fourier neural operator predicting Burgers'-equation
  turbulence, with SIR-based wireless connectivity deciding which aircraft can upload —
  is **not reproduced**: fedweave evaluates the aggregation rule on its own tasks, and
  device availability comes from ``system`` profiles, not from a UAM connectivity model.
* Server state: one float64 per device (its last upload time) plus two running sums.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import torch
from pydantic import Field, field_validator

from ..core.strategy import ServerState
from .fedasync import FullModelClient
from .merge import MergeStrategy
from .registry import MethodInfo, MethodParams, register


class AFLParams(MethodParams):
    beta_mode: Literal["staleness", "constant"] = Field(
        "staleness", description="staleness: β = (0.5 + e^(−Δt/T))/N; constant: β = 1.5/N (the public notebook)"
    )
    time_scale_s: Union[float, Literal["auto"]] = Field(
        "auto", description="T in e^(−Δt/T), virtual seconds; auto: running mean of the observed upload gaps"
    )

    @field_validator("time_scale_s")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError("time_scale_s must be 'auto' or a finite number > 0 (virtual seconds)")
        return v


class AFLStalenessStrategy(MergeStrategy):
    name = "afl_staleness"

    def __init__(self, beta_mode: str = "staleness", time_scale_s: float | str = "auto"):
        self.beta_mode, self.time_scale_s = beta_mode, time_scale_s

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        state.extra["last_upload_s"] = torch.zeros(ctx.num_clients, dtype=torch.float64)
        state.extra["gap_sum"] = 0.0
        state.extra["gap_count"] = 0
        return state

    def beta(self, gap_s: float, time_scale_s: float, num_devices: int) -> float:
        if self.beta_mode == "constant":
            return 1.5 / num_devices
        return (0.5 + math.exp(-gap_s / time_scale_s)) / num_devices if time_scale_s > 0 else 1.5 / num_devices

    def on_update(self, update, state: ServerState, ctx) -> ServerState:
        now = float(ctx.clock.now())
        cid = update.client_id
        last = state.extra["last_upload_s"]
        gap = max(now - float(last[cid]), 0.0)
        gap_sum, gap_count = state.extra["gap_sum"] + gap, state.extra["gap_count"] + 1
        scale = gap_sum / gap_count if self.time_scale_s == "auto" else float(self.time_scale_s)
        beta = self.beta(gap, scale, ctx.num_clients)
        self.merge(state, update, beta)
        new_last = last.clone()  # the engine's snapshots share tensors: never write in place
        new_last[cid] = now
        state.extra = {**state.extra, "last_upload_s": new_last, "gap_sum": gap_sum, "gap_count": gap_count,
                       "beta": beta, "time_scale_s": scale}
        state.version += 1
        return state

    def metrics(self, state: ServerState) -> dict[str, float]:
        return {k: state.extra[k] for k in ("beta", "time_scale_s") if k in state.extra}


def _build(config, params: AFLParams):
    return AFLStalenessStrategy(params.beta_mode, params.time_scale_s), FullModelClient(config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="afl_staleness",
        summary="async: w ← w + β (w_k − w), β = (0.5 + e^(−Δt/T))/N from the device's upload gap",
        citation="Wireless-enabled asynchronous federated FNO for turbulence prediction in UAM (staleness-aware AFL)",
        build=_build,
        params=AFLParams,
        modes=("async",),
    )
)
