"""The default task bundle: ``classification`` (cross-entropy loss; accuracy, higher is
better). Its data sources (:mod:`fedweave.data.sources`) and models
(:mod:`fedweave.models`) are the built-in ones, so it registers only the task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.task import Task
from .registry import register_task


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


register_task("classification", ClassificationTask, "cross-entropy loss; accuracy (higher is better)")
