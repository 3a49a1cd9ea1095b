"""Projected gradient descent (PGD) adversarial examples (Madry et al., ICLR 2018).

L∞ PGD-k: start at a uniformly random point of the ε-ball around x (``random_start``),
then k times step ``x ← clip(Π_ε(x + α · sign(∇_x CE(f(x), y))), lo, hi)``, where Π_ε
projects onto the ε-ball around the clean input and ``[lo, hi]`` is the data's value range.
The default step size α = 2.5·ε/k lets the iterate cross the ball. The model is put in
eval mode while the examples are crafted (BatchNorm statistics are not touched) and
gradients are taken with respect to the input only (no parameter gradient accumulates).
Used by FAL's clients (adversarial training) and by ``eval.robust_accuracy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.device import module_device
from ..core.rng import uniform


def pgd_attack(
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    lo: float | None = None,
    hi: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial versions of ``x`` (a new tensor, detached)."""
    alpha = 2.5 * eps / steps if step_size is None else step_size
    was_training = module.training
    module.eval()
    x0 = x.detach()
    with torch.enable_grad():
        if random_start:
            noise = uniform(x0.shape, generator, x0.device, x0.dtype) * (2 * eps) - eps  # the same on every device
            adv = x0 + noise
        else:
            adv = x0.clone()
        if lo is not None or hi is not None:
            adv = adv.clamp(lo, hi)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(module(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            adv = adv.detach() + alpha * grad.sign()
            adv = torch.max(torch.min(adv, x0 + eps), x0 - eps)
            if lo is not None or hi is not None:
                adv = adv.clamp(lo, hi)
    module.train(was_training)
    return adv.detach()


def robust_accuracy(
    module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
    step_size: float | None = None, lo: float | None = None, hi: float | None = None,
    batch_size: int = 1024, seed: int = 0,
) -> float:
    """Share of ``(x, y)`` still classified correctly under PGD-k (deterministic for a seed)."""
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    was_training = module.training
    module.eval()
    dev = module_device(module)  # the evaluation model may live on executor.device
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
        adv = pgd_attack(module, xb, yb, eps, steps, step_size, lo, hi, True, gen)
        with torch.no_grad():
            correct += int((module(adv).argmax(dim=1) == yb).sum())
    module.train(was_training)
    return correct / max(len(y), 1)
