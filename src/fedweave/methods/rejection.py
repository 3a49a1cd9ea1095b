"""The confidence-rejection rule at evaluation, shared by FLIP and by any method as a control.

A prediction is rejected when its largest softmax probability is below τ. FLIP (Zhang et
al., ICLR 2023) applies the rule with ``method.threshold``; ``eval.reject_threshold``
applies the same rule to any other method (FedAvg + τ is the control that separates the
rule's effect from FLIP's trigger-inversion hardening). Not a method: no registration.
"""

from __future__ import annotations

import torch

from ..core.device import module_device
from ..core.observer import Observer


def reject(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where the prediction is rejected: max softmax probability < τ."""
    return torch.softmax(logits, dim=1).amax(dim=1) < threshold


class RejectionObserver(Observer):
    """Clean accuracy under the rejection rule (a rejected prediction counts as wrong) and
    the share of test inputs rejected."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, threshold: float, batch_size: int):
        self.x, self.y, self.threshold, self.batch_size = x, y, threshold, batch_size

    @torch.no_grad()
    def evaluate(self, module, state) -> dict:
        was_training = module.training
        module.eval()
        correct = rejected = 0
        dev = module_device(module)  # the evaluation model may live on executor.device
        for s in range(0, len(self.y), self.batch_size):
            logits = module(self.x[s : s + self.batch_size].to(dev))
            rej = reject(logits, self.threshold)
            rejected += int(rej.sum())
            correct += int(((logits.argmax(dim=1) == self.y[s : s + self.batch_size].to(dev)) & ~rej).sum())
        module.train(was_training)
        n = max(len(self.y), 1)
        return {"accuracy_with_rejection": correct / n, "rejection_rate": rejected / n}
