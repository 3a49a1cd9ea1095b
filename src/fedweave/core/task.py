"""The task contract: what a model is trained for.

A :class:`Task` gives the loss, the per-example figures and the evaluation metrics, and
names its primary metric. Methods, the trainer and the simulator ask the task, never the
dataset. Concrete tasks and their registry are in :mod:`fedweave.tasks`
(``classification``, ``language_model``, ``restoration``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Task:
    name: str
    metric_name: str
    higher_is_better: bool

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_example_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_example_score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The primary metric per example (averaged per client for fairness figures)."""
        raise NotImplementedError

    def weighted_loss_grad(self, output: torch.Tensor, target: torch.Tensor,
                           weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``output`` of shape ``[N, *out]`` and per-example ``weight`` ``[N]``: the
        weighted per-example losses ``w_i·ℓ_i`` and the gradient of their sum with respect
        to ``output``. The vectorized executor's bmm kernel backpropagates from it. This
        default asks autograd; tasks may give a closed form."""
        out = output.detach().requires_grad_()
        with torch.enable_grad():
            weighted = self.per_example_loss(out, target) * weight
            (grad,) = torch.autograd.grad(weighted.sum(), out)
        return weighted.detach(), grad

    def client_score(self, per_example: torch.Tensor) -> float:
        """A client's figure from its examples' ``per_example_score`` values (default: the
        mean; perplexity overrides it, since the mean of perplexities is not a perplexity)."""
        return float(per_example.mean())

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Sums over a batch (divided by the example count in :meth:`evaluate`)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> dict[str, float]:
        """Mean loss and metrics of ``model`` on ``(x, y)``, in eval mode."""
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        n = len(y)
        for start in range(0, n, batch_size):
            out = model(x[start : start + batch_size])
            for key, value in self.metric_sums(out, y[start : start + batch_size]).items():
                sums[key] = sums.get(key, 0.0) + value
        model.train(was_training)
        return {k: v / max(n, 1) for k, v in sums.items()}
