"""Central pretraining of a small backbone on a held-out public split.

Methods that start from a pretrained, frozen backbone (FedIns) need one without hub
downloads. :func:`pretrain` trains a module centrally with the standard local trainer
(:func:`fedweave.train.local_train`: minibatch SGD on in-memory tensors) on a split that
no client and no test example belongs to — in fedweave the server-held split
(``data.server_fraction``), which is class-balanced and disjoint from the clients' data
and the test set. It is seeded, so every worker that rebuilds the backbone gets the same
weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .core.params import FlatModel
from .core.rng import derive_seed, torch_generator
from .tasks import make_task
from .train import TrainSettings, local_train


@dataclass(frozen=True)
class PretrainSettings:
    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0


@torch.no_grad()
def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = module.training
    module.eval()
    acc = float((module(x).argmax(1) == y).float().mean()) if len(x) else float("nan")
    module.train(was)
    return acc


def pretrain(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: PretrainSettings, seed: int, task: str = "classification"
) -> dict[str, float]:
    """Train ``module`` in place on ``(x, y)``; returns ``{"loss": mean training loss of the
    run, "accuracy": accuracy on the split afterwards}``."""
    torch.manual_seed(derive_seed(seed, "pretrain-torch"))
    flat = FlatModel(module)
    s = TrainSettings(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, optimizer="sgd",
                      momentum=settings.momentum, weight_decay=settings.weight_decay)
    result = local_train(flat, make_task(task), x, y, torch.arange(len(x)), s, torch_generator(seed, "pretrain"))
    return {"loss": result.mean_loss, "accuracy": accuracy(module, x, y)}
