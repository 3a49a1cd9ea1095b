"""FedRep — Collins, Hassani, Mokhtari & Shakkottai, "Exploiting Shared Representations
for Personalized Federated Learning", ICML 2021 (Algorithm 1).

The model is a shared representation φ (the body) and a personal head h_k. Each round a
selected client first fits its head with the body fixed, then the body with the head fixed:

    h_k ← τ_h epochs of SGD on F_k(φ_g, h)      (φ frozen;  τ_h = method.head_epochs)
    φ_k ← τ_φ epochs of SGD on F_k(φ, h_k)      (h frozen;  τ_φ = client.epochs / local_steps)
    server: φ_g ← Σ_k n_k φ_k / Σ_k n_k

The paper averages uniformly over the cohort; fedweave's preset weights by size (the
FedAvg default) and keeps the weighting overridable (``method.weighting: uniform`` is the
paper's). The head is the segments with role ``personal`` — the last layer by default, or
``method.head`` patterns, exactly as in :mod:`fedweave.methods.fedper` — kept on the
client by the client-state store. "Frozen" is enforced by restoring the frozen part after
each phase, so weight decay and momentum cannot move it either. The head epochs are extra
local work that the simulator's virtual compute time does not charge (it charges the body
epochs, i.e. the client settings); ``examples_processed`` reports both phases.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import Field

from ..core.client import ClientAlgorithm, JobResult
from .fedper import HeadParams, head_roles
from .registry import MethodInfo, Preset, register


class FedRepParams(HeadParams):
    head_epochs: int = Field(10, ge=0, description="epochs of head training (body frozen) before the body epochs")


class FedRepClient(ClientAlgorithm):
    def __init__(self, head_epochs: int, objective: str = "plain", mu: float = 0.0):
        super().__init__(objective, mu)
        self.head_epochs = head_epochs

    def train(self, job, worker, generator) -> JobResult:
        from ..train import local_train

        model = worker.model
        idx = worker.data.client_train[job.client_id]
        n = model.params.numel()
        processed, phases = 0, []
        hooks = self.grad_hooks(job, worker)
        # phase 1: the head, body frozen; phase 2: the body, head frozen
        head_settings = replace(job.settings, epochs=self.head_epochs, local_steps=None)
        for settings, frozen in ((head_settings, slice(0, n)), (job.settings, slice(n, None))):
            if settings.epochs == 0 and settings.local_steps is None:
                continue
            keep = model.trained[frozen].clone()

            def freeze(grad, trained, frozen=frozen):
                grad[frozen].zero_()

            result = local_train(model, worker.task, worker.data.x, worker.data.y, idx, settings, generator,
                                 hooks + (freeze,), self.loss_fn(job, worker))
            with torch.no_grad():
                model.trained[frozen].copy_(keep)
            processed += result.examples_processed
            phases.append(result)
        body = phases[-1]
        update = self.build_update(job, worker, body.steps, {"loss": body.mean_loss})
        return JobResult(update, None, processed)


def _client(config, params):
    return FedRepClient(params.head_epochs, config.client.objective, config.client.mu)


METHOD = register(
    MethodInfo(
        name="fedrep",
        summary="shared body averaged; per round the client trains its personal head, then the body",
        citation="Collins et al., ICML 2021",
        preset=Preset(client=_client),
        params=FedRepParams,
        roles=head_roles,
    )
)
