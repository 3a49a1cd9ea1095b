"""Model factories for the sweep tests (imported by worker processes as ``helpers_sweep:...``)."""

import math

import torch
from torch import nn


class _BreaksInTraining(nn.Module):
    """A linear model with a bug that only shows once gradients are on (i.e. in training).

    Config validation and evaluation run without gradients and succeed, so a sweep
    accepts it and the failure happens inside the worker, as real run-time bugs do.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("deliberate failure in training (helpers_sweep.breaks_in_training)")
        return self.fc(x.flatten(1))


def breaks_in_training(input_shape, num_classes, **_options):
    return _BreaksInTraining(math.prod(input_shape), num_classes)
