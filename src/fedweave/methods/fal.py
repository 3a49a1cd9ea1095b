"""FAL — Li, Song & Yang, "Federated Adversarial Learning: A Framework with Convergence
Guarantee", ICML 2023. No official code was found; this follows the paper's algorithm.

**Client.** At every local step the client crafts L∞ PGD adversarial examples of its
minibatch with its *current* local model (ε = ``method.eps``, ``method.steps`` steps of size
``method.step_size``, default 2.5·ε/steps, random start, clipped to the data's value range;
see :mod:`fedweave.models.adversarial`) and takes the gradient step on the adversarial batch
only (the paper's inner max / outer min; no clean term). The model is in eval mode while
the examples are crafted.

**Server.** FedAvg with a global learning rate η_g: ``w_g ← w_g + η_g Σ_k p_k Δ_k``
(server optimizer ``sgd`` without momentum; η_g = ``method.server_lr``, default 1, which is
plain FedAvg).

Report clean accuracy and PGD robust accuracy (``eval.robust_accuracy: true``, with
``eval.robust_eps`` etc.; set them equal to the training ε to compare like for like).
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from ..core.client import ClientAlgorithm
from ..models.adversarial import pgd_attack
from .registry import MethodInfo, MethodParams, Preset, register


class FALParams(MethodParams):
    eps: float = Field(0.1, gt=0, description="ε: L-infinity radius of the adversarial examples (input units)")
    steps: int = Field(10, ge=1, description="PGD steps per local step")
    step_size: Optional[float] = Field(None, gt=0, description="PGD step size (default 2.5·eps/steps)")


class FALClient(ClientAlgorithm):
    def __init__(self, objective: str, mu: float, params: FALParams):
        super().__init__(objective, mu)
        self.p = params

    def loss_fn(self, job, worker):
        inner = super().loss_fn(job, worker)
        task, p = worker.task, self.p
        lo, hi = float(worker.data.x.min()), float(worker.data.x.max())

        def loss(module, xb, yb):
            adv = pgd_attack(module, xb, yb, p.eps, p.steps, p.step_size, lo, hi, random_start=True)
            return inner(module, adv, yb) if inner is not None else task.loss(module(adv), yb)

        return loss


def _client(config, params: FALParams) -> FALClient:
    return FALClient(config.client.objective, config.client.mu, params)


METHOD = register(
    MethodInfo(
        name="fal",
        summary="clients train on PGD adversarial examples; FedAvg with global learning rate",
        citation="Li, Song & Yang, ICML 2023",
        preset=Preset(weighting="size", combiner="mean", server_opt="sgd", server_lr=1.0, client=_client),
        params=FALParams,
    )
)
