"""The standard local trainer: epochs of minibatch SGD/Adam on in-memory tensors.

No ``DataLoader``: a client's data is an index array into one dataset tensor, and each
minibatch is one ``index_select``. The optimizer works on the model's flat trained
vector and flat gradient (see :mod:`fedweave.params`), so a step is a handful of vector
operations whatever the number of layers. Semantics follow ``torch.optim.SGD`` (L2
weight decay added to the gradient, momentum buffer initialised with the first
gradient, no dampening) and ``torch.optim.Adam``.

Per step: forward and loss (a method may replace the loss), backward into the flat
gradient, gradient hooks (FedProx's proximal term, SCAFFOLD's correction...), gradient
clipping, then the optimizer step. The SGD step is :class:`fedweave.step.SGDStep`, the one
rule that the vectorized executor applies as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .core.augment import augment_batch
from .core.device import autocast
from .core.params import FlatModel
from .core.task import Task
from .step import SGDStep, add_weight_decay, clip_scale

GradHook = Callable[[torch.Tensor, torch.Tensor], None]  # (flat grad, flat trained) -> None, in place
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    epochs: Optional[int] = 1
    local_steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    augment: str = "none"  # data.augment, applied to each minibatch (fedweave.core.augment)
    precision: str = "fp32"  # client.precision: autocast of the forward pass (fedweave.core.device)
    channels_last: bool = False  # executor.channels_last: image minibatches in NHWC memory layout

    def num_steps(self, num_examples: int) -> int:
        """Local steps for a client with ``num_examples`` (the last batch may be short)."""
        if num_examples == 0:
            return 0
        if self.local_steps is not None:
            return self.local_steps
        return (self.epochs or 1) * math.ceil(num_examples / self.batch_size)

    def examples_processed(self, num_examples: int) -> int:
        """Examples a client with ``num_examples`` processes: what its compute time is charged for.
        Known before training, so the simulator can schedule a job when it dispatches it."""
        if num_examples == 0:
            return 0
        steps = self.num_steps(num_examples)
        per_epoch = math.ceil(num_examples / self.batch_size)
        full_epochs, rest = divmod(steps, per_epoch)
        return full_epochs * num_examples + rest * self.batch_size


@dataclass
class TrainResult:
    steps: int
    examples_processed: int
    mean_loss: float


class FlatOptimizer:
    """SGD (momentum, weight decay; the rule of :class:`fedweave.step.SGDStep`) or Adam over
    one flat vector, after clipping the gradient to ``grad_clip``."""

    def __init__(self, settings: TrainSettings, size: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.s = settings
        self.t = 0
        self.exp_avg: torch.Tensor | None = None
        self.exp_avg_sq: torch.Tensor | None = None
        if settings.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown local optimizer {settings.optimizer!r}")
        # FedProx's term is not part of this rule: it comes as a gradient hook (see fedweave.step)
        self.rule = SGDStep.of(settings)
        self.bufs = [torch.empty(size, dtype=dtype, device=device)] if settings.optimizer == "sgd" and settings.momentum else []

    @torch.no_grad()
    def step(self, w: torch.Tensor, g: torch.Tensor) -> None:
        s = self.s
        self.t += 1
        if s.optimizer == "sgd":
            self.rule.apply([w], [g], self.bufs, self.t == 1)
            return
        if s.grad_clip is not None:
            g.mul_(clip_scale(g.norm(), s.grad_clip))
        if s.weight_decay:
            g = add_weight_decay([g], [w], s.weight_decay)[0]
        b1, b2 = s.betas
        if self.exp_avg is None:
            self.exp_avg = torch.zeros_like(w)
            self.exp_avg_sq = torch.zeros_like(w)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        bias1 = 1 - b1**self.t
        bias2 = 1 - b2**self.t
        denom = (self.exp_avg_sq / bias2).sqrt_().add_(s.eps)
        w.addcdiv_(self.exp_avg, denom, value=-s.lr / bias1)


def epoch_orders(indices: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> list[torch.Tensor]:
    """The example order of every epoch a client starts: one permutation of ``indices`` per
    epoch, drawn from ``generator`` in turn; minibatches are consecutive slices of it, the
    last one short. :func:`local_train` and the vectorized executor both draw them here, so
    they train on the same batches."""
    n = len(indices)
    total = settings.num_steps(n)
    if n == 0 or total == 0:
        return []
    per_epoch = math.ceil(n / settings.batch_size)
    # the permutation is drawn on the host, whatever the device: the same batches everywhere
    return [indices[torch.randperm(n, generator=generator, device="cpu")] for _ in range(math.ceil(total / per_epoch))]


def to_compute_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A minibatch gathered where the data lives, on the model's device: from host memory
    through a pinned copy, so that the transfer does not block the host."""
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class LossScaler:
    """Dynamic loss scaling for float16 training (the rule of ``torch.amp.GradScaler``,
    applied to the flat gradient): the loss is multiplied by ``scale`` before backward and
    the gradient divided by it after; a step whose gradient is not finite is skipped and
    the scale halved; after ``growth_interval`` finite steps in a row it doubles."""

    def __init__(self, scale: float = 2.0**16, growth_interval: int = 2000):
        self.scale, self.growth_interval, self._good = scale, growth_interval, 0

    def unscale(self, g: torch.Tensor) -> bool:
        """Divide ``g`` by the scale in place; whether the step may be taken."""
        g.mul_(1.0 / self.scale)
        finite = bool(torch.isfinite(g).all())
        if finite:
            self._good += 1
            if self._good == self.growth_interval:
                self.scale, self._good = self.scale * 2.0, 0
        else:
            self.scale, self._good = self.scale * 0.5, 0
        return finite


def local_train(
    model: FlatModel,
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    grad_hooks: tuple[GradHook, ...] = (),
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``x[indices], y[indices]``, on the model's device.

    ``x`` and ``y`` may live on that device, or in (pinned) host memory, in which case each
    minibatch is gathered on the host and copied over without blocking. With
    ``settings.precision`` bf16 or fp16 the forward pass and the loss run under autocast;
    fp16 scales the loss (:class:`LossScaler`) and skips steps whose gradient overflowed.
    The gradient hooks and the optimizer step always work on the fp32 flat vectors."""
    n = len(indices)
    total_steps = settings.num_steps(n)
    if n == 0 or total_steps == 0:
        return TrainResult(0, 0, float("nan"))
    module = model.module
    module.train()
    w, g = model.trained, model.grad
    device = w.device
    opt = FlatOptimizer(settings, w.numel(), w.dtype, device)
    bs = settings.batch_size
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    scaler = LossScaler() if settings.precision == "fp16" else None
    resident = x.device == device
    steps = processed = 0
    for order in epoch_orders(indices, settings, generator):
        order = order.to(x.device)
        for start in range(0, n, bs):
            batch = order[start : start + bs]
            xb, yb = x.index_select(0, batch), y.index_select(0, batch)
            if not resident:
                xb, yb = to_compute_device(xb, device), to_compute_device(yb, device)
            if settings.augment != "none":  # drawn from the job's generator after its epoch orders
                xb = augment_batch(xb, settings.augment, generator)
            if settings.channels_last and xb.dim() == 4:  # oneDNN/cuDNN then pick NHWC convolutions
                xb = xb.contiguous(memory_format=torch.channels_last)
            g.zero_()
            with autocast(settings.precision, device):
                loss = loss_fn(module, xb, yb) if loss_fn else task.loss(module(xb), yb)
            (loss * scaler.scale if scaler else loss).backward()
            if scaler is None or scaler.unscale(g):  # an overflowed fp16 step is skipped
                for hook in grad_hooks:
                    hook(g, w)
                opt.step(w, g)
            loss_sum += loss.detach()
            steps += 1
            processed += len(batch)
            if steps >= total_steps:
                break
    return TrainResult(steps, processed, float(loss_sum) / steps)
