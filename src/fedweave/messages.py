"""Compatibility path: the messages and their byte counts live in :mod:`fedweave.core.messages`."""

from .core.messages import Broadcast, SCALAR_BYTES, Update, payload_bytes, tensor_bytes, tensor_is_finite

__all__ = ["SCALAR_BYTES", "Broadcast", "Update", "payload_bytes", "tensor_bytes", "tensor_is_finite"]
