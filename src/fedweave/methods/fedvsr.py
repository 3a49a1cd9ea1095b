"""FedVSR — "FedVSR: Towards Model-Agnostic Federated Learning in Video Super-Resolution",
arXiv 2503.13745, ACM MMSys 2026 (official code: alimd94/FedVSR).

Two parts, both usable on their own:

**Client: high-frequency loss.** Each client adds to its task loss (Charbonnier for the
``restoration`` task) the Charbonnier distance between the high-frequency sub-bands of
a one-level Haar DWT of the output ŷ and of the target y:

    L = L_task(ŷ, y) + λ_hf · mean over {LH, HL, HH} and all coefficients of √((D(ŷ) − D(y))² + 1e-9)

with the orthonormal Haar transform of each 2×2 block [[a, b], [c, d]] of every channel:

    LL = (a + b + c + d)/2   LH = (a + b − c − d)/2   HL = (a − b + c − d)/2   HH = (a − b − c + d)/2

(odd sides are zero-padded, like ``pytorch_wavelets``' mode "zero"). λ_hf =
``method.hf_weight`` (1, as in the code's IART script, which adds the term unweighted).
The paper's models are video models and use a 3-D DWT (7 high-frequency sub-bands); on
single images this is its 2-D counterpart. The client reports its mean training loss
L̄_i (the standard ``loss`` metric of every upload, the HF term included).

**Server: loss-aware weighting** (``method.weighting: loss``, usable with any preset).
In round t (0-based) of T = ``schedule.rounds``:

    e_t = 1 − t / T
    p_i ∝ (1 / L̄_i)^{e_t}                       loss-based distribution
    u_i = 1 / K                                  uniform distribution
    H = Hellinger(u, p) = √(½ Σ_i (√u_i − √p_i)²)
    c = 0 if H < 0.05 else (H − 0.05) / 0.95     soft switch (threshold ``method.hellinger_threshold``)
    w_i = (1 − c) u_i + c p_i

As in the code, the weights ignore client sizes (u is uniform) and the exponent starts at
1 in the first round. Losses are floored at 1e-12 before inverting. Method ``fedvsr`` =
weighting ``loss`` + the high-frequency client loss (which needs image outputs:
``task.kind: restoration``, or ``video_sr``, whose sliding-window models output the HR
centre frame, so the 2-D transform is the per-frame counterpart of the paper's 3-D one;
with ``method.hf_weight: 0`` it runs on any task).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError
from .registry import MethodInfo, MethodParams, Preset, register
from .stages import register_weighting

HF_EPS = 1e-9
#: tasks whose outputs and targets are images: the high-frequency loss compares them
IMAGE_OUTPUT_TASKS = ("restoration", "video_sr")


# -- client: Haar DWT and the high-frequency loss ------------------------------------------


def haar_dwt2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-level orthonormal 2-D Haar DWT of ``[..., H, W]``: (LL, LH, HL, HH), each ``[..., ⌈H/2⌉, ⌈W/2⌉]``."""
    h, w = x.shape[-2], x.shape[-1]
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2))
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2


def high_frequency_loss(output: torch.Tensor, target: torch.Tensor, eps: float = HF_EPS) -> torch.Tensor:
    """Mean over the LH, HL, HH sub-bands of √((D(ŷ) − D(y))² + eps)."""
    if output.dim() < 3:
        raise ConfigError(
            f"FedVSR's high-frequency loss needs image outputs [batch, channels, height, width]; got shape "
            f"{tuple(output.shape)}. Use task.kind: restoration, or set method.hf_weight: 0."
        )
    _, lh, hl, hh = haar_dwt2d(output - target)  # the DWT is linear: D(ŷ) − D(y) = D(ŷ − y)
    diff = torch.stack([lh, hl, hh])
    return torch.sqrt(diff * diff + eps).mean()


class FedVSRClient(ClientAlgorithm):
    """The standard trainer with the task loss plus λ_hf times the high-frequency loss."""

    def __init__(self, objective: str = "plain", mu: float = 0.0, hf_weight: float = 1.0):
        super().__init__(objective, mu)
        self.hf_weight = hf_weight

    def loss_fn(self, job, worker):
        if self.hf_weight == 0:
            return None
        task, lam = worker.task, self.hf_weight

        def loss(module, xb, yb):
            out = module(xb)
            return task.loss(out, yb) + lam * high_frequency_loss(out, yb)

        return loss


# -- server: the loss-aware weighting -------------------------------------------------------


def loss_aware_weights(losses: torch.Tensor, t: int, total_rounds: int, threshold: float = 0.05) -> torch.Tensor:
    """FedVSR's weights ``[K]`` (sum 1) from the clients' mean training losses."""
    losses = losses.to(torch.float64).clamp_min(1e-12)
    k = losses.numel()
    e = 1.0 - t / total_rounds
    inv = (1.0 / losses) ** e
    p = inv / inv.sum()
    u = torch.full_like(p, 1.0 / k)
    hellinger = torch.sqrt(0.5 * ((u.sqrt() - p.sqrt()) ** 2).sum())
    c = 0.0 if hellinger < threshold else float((hellinger - threshold) / (1.0 - threshold))
    return (1.0 - c) * u + c * p


class LossWeightingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hellinger_threshold: float = Field(0.05, ge=0, lt=1, description="Hellinger distance below which weights stay uniform")


class LossAwareWeighting:
    def __init__(self, total_rounds: int, threshold: float):
        self.total_rounds, self.threshold = total_rounds, threshold

    def __call__(self, updates, state, ctx) -> torch.Tensor:
        losses = torch.tensor([u.metrics.get("loss", float("nan")) for u in updates], dtype=torch.float64)
        if not bool(torch.isfinite(losses).all()):
            raise ConfigError("The 'loss' weighting needs every client's mean training loss; some uploads have none.")
        return loss_aware_weights(losses, state.round, self.total_rounds, self.threshold)


def _make_loss_weighting(config, params: LossWeightingParams) -> LossAwareWeighting:
    return LossAwareWeighting(config.schedule.rounds if config is not None else 1, params.hellinger_threshold)


register_weighting(
    "loss",
    _make_loss_weighting,
    "FedVSR: p_i ~ (1/mean loss_i)^(1 - t/T), mixed with uniform by the Hellinger distance (method.hellinger_threshold)",
    params=LossWeightingParams,
)


# -- the method ------------------------------------------------------------------------------


class FedVSRParams(MethodParams):
    hf_weight: float = Field(1.0, ge=0, description="weight of the high-frequency DWT loss on clients")


def _client(config, params: FedVSRParams) -> ClientAlgorithm:
    if params.hf_weight > 0 and config.task.kind not in IMAGE_OUTPUT_TASKS:
        raise ConfigError(
            f"FedVSR's high-frequency loss compares output and target images, which task.kind {config.task.kind!r} "
            "does not have. Use task.kind: restoration (data.dataset: sr2:<image source>) or video_sr (data.dataset: clips), or set method.hf_weight: 0 "
            "(or use method.weighting: loss with another method) for the loss-aware weighting alone."
        )
    return FedVSRClient(config.client.objective, config.client.mu, params.hf_weight)


METHOD = register(
    MethodInfo(
        name="fedvsr",
        summary="loss-aware weights (Hellinger-switched) + high-frequency Haar DWT client loss (restoration)",
        citation="FedVSR, arXiv 2503.13745 (ACM MMSys 2026)",
        preset=Preset(weighting="loss", combiner="mean", server_opt="replace", client=_client),
        params=FedVSRParams,
    )
)
