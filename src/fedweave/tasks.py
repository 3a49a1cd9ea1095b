"""What a model is trained for: the loss, the evaluation metrics and the primary metric.

Methods and metrics ask the task, not the dataset. ``classification`` trains with
cross-entropy and reports accuracy; later tasks (restoration, language modelling) plug
in with their own loss and primary metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core.errors import unknown_name
from .core.task import Task


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


def register_task(kind: str, cls: type[Task], description: str) -> None:
    """Make a task available as ``task.kind: <kind>``."""
    TASKS[kind] = (cls, description)


def make_task(kind: str) -> Task:
    if kind not in TASKS:
        raise unknown_name("task", kind, TASKS)
    return TASKS[kind][0]()


from . import restoration as _restoration  # noqa: E402,F401  (registers task.kind 'restoration')
from . import lm as _lm  # noqa: E402,F401  (registers task.kind 'language_model' and model 'transformer')
