"""Messages between server and clients: :class:`Broadcast` and :class:`Update`.

Both carry typed, named tensor payloads so a method can add what it needs (SCAFFOLD's
control variates, FedDisco's label histogram, PGFed's gradients...) without touching the
engine. Communication is counted analytically from what a message carries: every tensor
at its dtype's size, every scalar as 8 bytes. The same messages are what a deployment
serializes; the deployment counts wire bytes beside these analytic figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

SCALAR_BYTES = 8


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def payload_bytes(payload: dict[str, Any]) -> int:
    total = 0
    for value in payload.values():
        if isinstance(value, torch.Tensor):
            total += tensor_bytes(value)
        elif isinstance(value, (int, float, bool)):
            total += SCALAR_BYTES
        elif isinstance(value, (list, tuple)):
            total += sum(tensor_bytes(v) if isinstance(v, torch.Tensor) else SCALAR_BYTES for v in value)
        else:
            raise TypeError(f"Payload values must be tensors, numbers or lists of them, not {type(value).__name__}.")
    return total


@dataclass
class Broadcast:
    """Server → client: the global model (or what the method sends instead).

    ``params`` is the shared trainable vector and ``buffers`` the shared float buffers;
    both may be shared by reference between the clients of a round, and must not be
    modified by a client. ``config`` carries per-round training settings (learning rate,
    local steps) and is not counted as payload.
    """

    version: int
    params: torch.Tensor | None
    buffers: torch.Tensor | None
    payload: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def num_bytes(self) -> int:
        return tensor_bytes(self.params) + tensor_bytes(self.buffers) + payload_bytes(self.payload) + SCALAR_BYTES

    def with_payload(self, **extra: Any) -> "Broadcast":
        """A copy sharing the tensors, with more payload entries (per-client extras)."""
        return Broadcast(self.version, self.params, self.buffers, {**self.payload, **extra}, dict(self.config))


@dataclass
class Update:
    """Client → server: the result of one client job.

    The standard upload is ``delta`` (new − received trainable vector) and the new shared
    buffers, with the number of examples and of local steps; methods add tensors to
    ``payload``. ``metrics`` holds training figures (``loss``) sent as scalars.

    Methods that merge full models asynchronously (FedAsync, FedASMU) upload the new
    trainable vector ``params`` instead: then only ``params`` travels and is counted,
    and ``delta`` is kept beside it for the simulator's hooks.
    """

    client_id: int
    base_version: int
    delta: torch.Tensor | None
    buffers: torch.Tensor | None
    num_examples: int
    num_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    params: torch.Tensor | None = None

    def num_bytes(self) -> int:
        # client id, base version, examples and steps travel as four scalars
        return (
            (tensor_bytes(self.params) if self.params is not None else tensor_bytes(self.delta))
            + tensor_bytes(self.buffers)
            + payload_bytes(self.payload)
            + SCALAR_BYTES * (4 + len(self.metrics))
        )

    def is_finite(self) -> bool:
        values = [self.delta, self.params, self.buffers, *self.payload.values(), *self.metrics.values()]
        return all(_finite(v) for v in values)


def tensor_is_finite(t: torch.Tensor) -> bool:
    """All entries finite. A float64 sum of finite float32/16 values cannot overflow, so a
    finite sum settles it in one pass (~7× faster than ``isfinite(t).all()``); only a
    non-finite sum needs the exact check (float64 inputs could overflow the sum)."""
    if t.numel() == 0:
        return True
    if math.isfinite(float(t.sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(t).all())


def _finite(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or tensor_is_finite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return True
