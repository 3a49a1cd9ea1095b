"""Where client training runs: the device of ``executor.device`` and the precision of
``client.precision``, resolved and checked once, and the small helpers every executor
uses to put tensors there and bring results back.

``auto`` is the first CUDA device when one is available, else the CPU. A run is
deterministic on one device whatever the executor (serial, vectorized within float
tolerance, Ray); results on a GPU are not expected to equal those on a CPU (different
kernels sum in different orders). ``executor.deterministic`` additionally asks PyTorch for
deterministic kernels, which on CUDA also needs the cuBLAS workspace variable set before
the first matrix product.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch

from .errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N (N a CUDA device index)"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# fraction of a CUDA device's free memory that client data may take when it is made resident
DATA_MEMORY_FRACTION = 0.5
CUBLAS_WORKSPACE = ":4096:8"


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` of ``executor.device``; a :class:`ConfigError` naming the
    problem and the allowed values when it cannot be used on this machine."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text[5:] if text.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise ConfigError(f"executor.device={spec!r} is not a device: the CUDA index must be a non-negative "
                              f"integer. Allowed values: {DEVICE_CHOICES}.")
        if not torch.cuda.is_available():
            raise ConfigError(f"executor.device={spec!r} asks for CUDA, but no CUDA device is available on this "
                              f"machine (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). "
                              f"Use executor.device=cpu, or auto to use CUDA only where it exists. "
                              f"Allowed values: {DEVICE_CHOICES}.")
        index, count = int(index_text), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"executor.device={spec!r} names CUDA device {index}, but this machine has {count} "
                              f"(indices 0 to {count - 1}). Allowed values: {DEVICE_CHOICES}.")
        return torch.device("cuda", index)
    raise ConfigError(f"executor.device={spec!r} is not a device. Allowed values: {DEVICE_CHOICES}.")


def describe_device(spec: str) -> str:
    """What ``executor.device`` resolved to, for the summary: ``cuda:0 (auto)``, ``cpu``..."""
    device = resolve_device(spec)
    name = f"{device.type}:{device.index}" if device.index is not None else device.type
    if device.type == "cuda":
        name += f" {torch.cuda.get_device_name(device)}"
    return f"{name} (auto)" if str(spec).strip().lower() == "auto" else name


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``client.precision`` the device cannot train in (fp16 autocast needs CUDA)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"client.precision={precision!r} is not a precision. Allowed values: fp32, bf16, fp16.")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"client.precision=fp16 needs a CUDA device, but executor.device resolves to {device}: "
                          "float16 autocast and its gradient scaler are a CUDA feature. On the CPU use "
                          "client.precision=bf16 or fp32. Allowed values: fp32, bf16, fp16 (fp16 on CUDA only).")


def autocast(precision: str, device: torch.device):
    """The forward pass's autocast context for ``precision`` (nothing for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_deterministic(enabled: bool) -> bool:
    """Ask PyTorch for deterministic kernels (process-wide); returns the previous setting.
    On CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first product."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    return previous


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples, dataclasses) moved to
    ``device``; tensors already there are returned as they are (no copy), so on the CPU
    this changes nothing."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_device(getattr(obj, f.name), device, non_blocking)
                   for f in dataclasses.fields(obj) if f.init}
        if all(changes[k] is getattr(obj, k) for k in changes):
            return obj
        return dataclasses.replace(obj, **changes)
    return obj


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters (else its buffers) live; the CPU for an empty module."""
    return next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))


def data_fits(nbytes: int, device: torch.device, budget_mb: float | None) -> bool:
    """Whether client data of ``nbytes`` is made resident on ``device``: within
    ``executor.data_memory_mb`` when set, else within :data:`DATA_MEMORY_FRACTION` of the
    device's free memory. The CPU always holds it."""
    if device.type == "cpu":
        return True
    if budget_mb is not None:
        return nbytes <= budget_mb * 2**20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= DATA_MEMORY_FRACTION * free
    return False
