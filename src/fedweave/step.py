"""The client's local SGD step, written once for every path that trains a client.

One step from the minibatch gradient g of the local loss (``torch.optim.SGD`` semantics:
L2 weight decay added to the gradient, the momentum buffer initialised with the first
gradient, no dampening; the proximal term is FedProx's, Li et al., "Federated
Optimization in Heterogeneous Networks", MLSys 2020, eq. (2): the gradient of
(μ/2)‖w − w₀‖² with the broadcast model w₀ as anchor)::

    g ← g + μ (w − w₀)               proximal term (FedProx; μ = 0 otherwise)
    g ← g · min(1, c / ‖g‖)          gradient clipping, if a bound c is set
    g ← g + λ w                      weight decay
    b ← m b + g  (b ← g at step 1)   momentum, if m > 0; the direction is d = b, else d = g
    w ← w − η d

:class:`SGDStep` holds (η, m, λ, μ, c) and applies the rule to matching lists of tensors:
:func:`fedweave.train.local_train` to the model's one flat trained vector, the vectorized
executor to the ``[K, *shape]`` stacks of a cohort of K clients (the norm in clipping is
then per client). Where the gradient is a matrix product δᵀa and there is no clipping,
the vectorized bmm kernel folds the whole step into that product; :meth:`SGDStep.fused`
gives the coefficients of that form, derived from the same five numbers.

In :func:`~fedweave.train.local_train` the proximal term arrives as a gradient hook
(:func:`fedweave.methods.base.prox_hook`, which calls :func:`add_proximal`), so that the
hooks of other methods (SCAFFOLD's correction, ...) still follow it in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

Tensors = Sequence[torch.Tensor]


def add_proximal(grads: Tensors, params: Tensors, anchors: Tensors, mu: float) -> None:
    """g ← g + μ(w − w₀), in place."""
    torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=mu)


def grad_norm(grads: Tensors, per_client: bool = False) -> torch.Tensor:
    """‖g‖ over all the tensors: a scalar, or with ``per_client`` one norm per client of
    ``[K, ...]`` stacks (shape ``[K]``)."""
    if per_client:
        return sum(g.reshape(len(g), -1).pow(2).sum(1) for g in grads).sqrt()
    if len(grads) == 1:
        return grads[0].norm()
    return torch.stack([g.norm() for g in grads]).norm()


def clip_scale(norm: torch.Tensor, bound: float) -> torch.Tensor:
    """min(1, c/‖g‖) for a norm of shape ``[]`` or ``[K]`` (one per client)."""
    return torch.where(norm > bound, bound / (norm + 1e-12), torch.ones_like(norm))


def add_weight_decay(grads: Tensors, params: Tensors, weight_decay: float) -> list[torch.Tensor]:
    """g + λw as new tensors (the caller's gradients are left as they are)."""
    return torch._foreach_add(grads, params, alpha=weight_decay)


@dataclass(frozen=True)
class FusedSGD:
    """The step of :class:`SGDStep` without clipping, rearranged around the raw gradient g
    so that a kernel can compute g inside one ``baddbmm_`` (the bmm kernel's weights).

    Without momentum: ``w ← beta·w + alpha·g + anchor·w₀``, i.e. β = 1 − η(μ+λ), α = −η,
    and ημ for the anchor. With momentum m: ``b ← m·b + g`` (b ← g at the first step), then
    ``b ← b + shrink·w + buffer_anchor·w₀`` with shrink = μ + λ and −μ, and ``w ← w + alpha·b``.
    """

    beta: float
    alpha: float
    anchor: float
    momentum: float
    shrink: float
    buffer_anchor: float


@dataclass(frozen=True)
class SGDStep:
    """The local SGD step rule: learning rate η, momentum m, weight decay λ, proximal μ
    (anchored at the model the client started from) and the clipping bound c (None: no
    clipping). See the module docstring for the equations."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.0
    grad_clip: Optional[float] = None

    @classmethod
    def of(cls, settings, mu: float = 0.0) -> "SGDStep":
        """The rule of a :class:`fedweave.train.TrainSettings` (plus FedProx's μ)."""
        return cls(settings.lr, settings.momentum, settings.weight_decay, mu, settings.grad_clip)

    def apply(self, params: Tensors, grads: Tensors, bufs: Tensors, first: bool, *, anchors: Tensors = (),
              per_client: bool = False) -> None:
        """One step, in place on ``params`` (and ``bufs``, the momentum buffers, which
        ``first`` initialises). ``grads`` may be modified. With ``anchors`` (one per
        parameter) the proximal term is added here; without, the caller has added it (or μ
        is 0). With ``per_client`` the tensors are ``[K, ...]`` stacks of K clients, each
        clipped by its own norm."""
        if anchors and self.mu:
            add_proximal(grads, params, anchors, self.mu)
        if self.grad_clip is not None:
            scale = clip_scale(grad_norm(grads, per_client), self.grad_clip)
            for g in grads:
                g.mul_(scale.view(-1, *([1] * (g.dim() - 1))) if per_client else scale)
        if self.weight_decay:
            grads = add_weight_decay(grads, params, self.weight_decay)
        if self.momentum:
            if first:
                torch._foreach_copy_(bufs, grads)
            else:
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-self.lr)

    def fused(self) -> FusedSGD:
        """The coefficients of the same step around the raw gradient (no clipping)."""
        if self.grad_clip is not None:
            raise ValueError("a clipped step cannot be fused: the clipping factor depends on the whole gradient")
        shrink = self.mu + self.weight_decay
        return FusedSGD(beta=1 - self.lr * shrink, alpha=-self.lr, anchor=self.lr * self.mu, momentum=self.momentum,
                        shrink=shrink, buffer_anchor=-self.mu)
