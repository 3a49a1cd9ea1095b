"""Server optimizers: how the global model moves given the aggregated client delta.

Following Reddi et al. 2021, *Adaptive Federated Optimization* (ICLR), the server treats
the negated aggregated client delta as a pseudo-gradient. With global parameters ``x`` and
``d = (average client model) - x`` (so ``g = -d``):

* ``replace`` (FedAvg, McMahan et al. 2017): ``x <- x + d``.
* ``sgd`` (FedAvgM, Hsu, Qi & Brown 2019, *Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification*): heavy-ball momentum on ``g``,
  ``m <- beta m + g;  x <- x - eta m``, without a ``(1 - beta)`` factor.
  ``lr=1, momentum=0`` is FedAvg.
* ``adam``, ``yogi``, ``adagrad`` (FedAdam, FedYogi, FedAdagrad; Reddi et al. 2021,
  Algorithm 2), with ``Delta = d``:

      m <- beta1 m + (1 - beta1) Delta
      v <- beta2 v + (1 - beta2) Delta^2                      (Adam)
      v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)           (Yogi)
      v <- v + Delta^2                                         (Adagrad)
      x <- x + eta m / (sqrt(v) + tau)

  without bias correction, as in the paper. The state starts at ``m = 0`` and
  ``v = tau^2``: the paper only asks ``v_{-1} >= tau^2``, and the smallest such value makes
  the first step as large as the adaptivity ``tau`` allows.

Each optimizer is a small immutable object with ``init(x) -> state`` and
``step(x, d, state) -> (new_x, new_state)``, in the style of Optax's gradient
transformations. ``step`` is pure: it returns new tensors and never modifies ``x``, ``d``
or ``state``. A state is a ``dict[str, Tensor]``, so it saves with ``torch.save``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from fedweave.core.errors import ConfigError, unknown_name

State = dict[str, Tensor]

__all__ = [
    "SERVER_OPTIMIZERS",
    "DEFAULT_SERVER_LR",
    "ServerOptimizer",
    "Replace",
    "ServerSGD",
    "ServerAdam",
    "ServerYogi",
    "ServerAdagrad",
    "make_server_optimizer",
]

SERVER_OPTIMIZERS: dict[str, str] = {
    "replace": "FedAvg: x <- x + d (the average client model replaces the global one).",
    "sgd": "FedAvgM (Hsu et al. 2019): heavy-ball SGD on the pseudo-gradient -d.",
    "adam": "FedAdam (Reddi et al. 2021): Adam-style adaptive server step, no bias correction.",
    "yogi": "FedYogi (Reddi et al. 2021): Yogi's additive second-moment update.",
    "adagrad": "FedAdagrad (Reddi et al. 2021): accumulated squared deltas.",
}

#: Server learning rate used when none is given (``replace`` has none).
DEFAULT_SERVER_LR: dict[str, float] = {
    "replace": 1.0,
    "sgd": 1.0,
    "adam": 0.1,
    "yogi": 0.01,
    "adagrad": 0.1,
}


@runtime_checkable
class ServerOptimizer(Protocol):
    """Moves the flat global parameters ``x`` ``[P]`` given the aggregated delta ``d`` ``[P]``."""

    def init(self, x: Tensor) -> State:
        """The initial state for parameters shaped like ``x``."""
        ...

    def step(self, x: Tensor, d: Tensor, state: State) -> tuple[Tensor, State]:
        """The new parameters and the new state; inputs are left unchanged."""
        ...


def _check_lr(name: str, lr: float) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(
            f"Server optimizer {name!r}: lr must be a finite number > 0, got {lr!r}."
        )


def _check_beta(name: str, label: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ConfigError(
            f"Server optimizer {name!r}: {label} must be in [0, 1), got {value!r}."
        )


def _check_tau(name: str, tau: float) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ConfigError(
            f"Server optimizer {name!r}: tau must be a finite number > 0, got {tau!r}."
        )


def _check_step_inputs(x: Tensor, d: Tensor) -> None:
    if x.shape != d.shape:
        raise ValueError(
            f"x and d must have the same shape, got {tuple(x.shape)} and {tuple(d.shape)}."
        )


@dataclass(frozen=True)
class Replace:
    """FedAvg: the aggregated delta is applied as is, ``x <- x + d``. Stateless."""

    def init(self, x: Tensor) -> State:
        return {}

    def step(self, x: Tensor, d: Tensor, state: State) -> tuple[Tensor, State]:
        _check_step_inputs(x, d)
        return x + d, {}


@dataclass(frozen=True)
class ServerSGD:
    """FedAvgM: ``m <- momentum m + g``, ``x <- x - lr m`` with ``g = -d``.

    The state always holds ``m`` (also for ``momentum=0``), so its keys never change.
    """

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _check_lr("sgd", self.lr)
        _check_beta("sgd", "momentum", self.momentum)

    def init(self, x: Tensor) -> State:
        return {"m": torch.zeros_like(x)}

    def step(self, x: Tensor, d: Tensor, state: State) -> tuple[Tensor, State]:
        _check_step_inputs(x, d)
        m = self.momentum * state["m"] - d  # g = -d: the client models moved by d
        return x - self.lr * m, {"m": m}


class _Adaptive:
    """Shared first moment and update of Reddi et al.'s Algorithm 2; subclasses set ``v``.

    Subclasses are frozen dataclasses with fields ``lr``, ``beta1``, ``tau`` (and ``beta2``
    where they use it).
    """

    name = "adaptive"
    lr: float
    beta1: float
    tau: float

    def __post_init__(self) -> None:
        _check_lr(self.name, self.lr)
        _check_beta(self.name, "beta1", self.beta1)
        if hasattr(self, "beta2"):
            _check_beta(self.name, "beta2", self.beta2)
        _check_tau(self.name, self.tau)

    def init(self, x: Tensor) -> State:
        return {"m": torch.zeros_like(x), "v": torch.full_like(x, self.tau**2)}

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self, x: Tensor, d: Tensor, state: State) -> tuple[Tensor, State]:
        _check_step_inputs(x, d)
        m = self.beta1 * state["m"] + (1.0 - self.beta1) * d
        v = self._second_moment(state["v"], d * d)
        return x + self.lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}


@dataclass(frozen=True)
class ServerAdam(_Adaptive):
    """FedAdam: ``v <- beta2 v + (1 - beta2) d^2``."""

    lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    name = "adam"

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


@dataclass(frozen=True)
class ServerYogi(_Adaptive):
    """FedYogi: ``v <- v - (1 - beta2) d^2 sign(v - d^2)``.

    Unlike Adam, ``v`` moves by at most ``(1 - beta2) d^2`` per step and, when the deltas
    grow, increases additively instead of being pulled towards them multiplicatively.
    """

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    name = "yogi"

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return v - (1.0 - self.beta2) * delta_sq * torch.sign(v - delta_sq)


@dataclass(frozen=True)
class ServerAdagrad(_Adaptive):
    """FedAdagrad: ``v <- v + d^2`` (no ``beta2``)."""

    lr: float = 0.1
    beta1: float = 0.9
    tau: float = 1e-3
    name = "adagrad"

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return v + delta_sq


def make_server_optimizer(
    name: str,
    lr: float | None = None,
    momentum: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> ServerOptimizer:
    """Build the server optimizer ``name`` (one of :data:`SERVER_OPTIMIZERS`).

    ``lr=None`` takes the optimizer's default from :data:`DEFAULT_SERVER_LR`. Options an
    optimizer does not use are ignored (``replace`` uses none; ``momentum`` is for ``sgd``
    only; ``beta1``, ``beta2`` and ``tau`` for the adaptive ones, ``beta2`` not for
    ``adagrad``). Raises ConfigError for unknown names and out-of-range values.
    """
    if name not in SERVER_OPTIMIZERS:
        raise unknown_name("server optimizer", str(name), SERVER_OPTIMIZERS)
    if name == "replace":
        return Replace()
    rate = DEFAULT_SERVER_LR[name] if lr is None else lr
    if name == "sgd":
        return ServerSGD(lr=rate, momentum=momentum)
    if name == "adam":
        return ServerAdam(lr=rate, beta1=beta1, beta2=beta2, tau=tau)
    if name == "yogi":
        return ServerYogi(lr=rate, beta1=beta1, beta2=beta2, tau=tau)
    # Adagrad ignores beta2, but a bad value is still a config mistake worth reporting.
    _check_beta(name, "beta2", beta2)
    return ServerAdagrad(lr=rate, beta1=beta1, tau=tau)
