"""What a model is trained for: the loss, the evaluation metrics and the primary metric.

Methods and metrics ask the task, not the dataset. ``classification`` trains with
cross-entropy and reports accuracy; later tasks (restoration, language modelling) plug
in with their own loss and primary metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import unknown_name
from .registration import claim


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


class ClassificationTask(Task):
    def __init__(self):
        super().__init__("classification", "accuracy", True)

    def loss(self, output, target):
        return F.cross_entropy(output, target)

    def per_example_loss(self, output, target):
        return F.cross_entropy(output, target, reduction="none")

    def weighted_loss_grad(self, output, target, weight):
        # ℓ_i = −log softmax(o_i)[y_i];  ∂ℓ_i/∂o_i = softmax(o_i) − onehot(y_i)
        log_p = torch.log_softmax(output, dim=1)
        weighted = F.nll_loss(log_p, target, reduction="none").mul_(weight)
        grad = log_p.exp_().mul_(weight.unsqueeze(1))
        return weighted, grad.scatter_add_(1, target.unsqueeze(1), weight.neg().unsqueeze(1))

    def per_example_score(self, output, target):
        return (output.argmax(dim=1) == target).to(torch.float64)

    def metric_sums(self, output, target):
        loss = F.cross_entropy(output, target, reduction="sum").item()
        correct = (output.argmax(dim=1) == target).sum().item()
        return {"loss": loss, "accuracy": float(correct)}


TASKS: dict[str, tuple[type[Task], str]] = {
    "classification": (ClassificationTask, "cross-entropy loss; accuracy (higher is better)"),
}


def register_task(kind: str, cls: type[Task], description: str, *, replace: bool = False) -> None:
    """Make a task available as ``task.kind: <kind>`` (``replace=True`` re-registers it)."""
    claim("task", kind, TASKS, replace)
    TASKS[kind] = (cls, description)


def make_task(kind: str) -> Task:
    if kind not in TASKS:
        raise unknown_name("task", kind, TASKS)
    return TASKS[kind][0]()


from . import restoration as _restoration  # noqa: E402,F401  (registers task.kind 'restoration')
from . import lm as _lm  # noqa: E402,F401  (registers task.kind 'language_model' and model 'transformer')
