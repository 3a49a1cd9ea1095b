"""Keeping the memory that training and evaluation free, for the next batch to reuse.

Training and evaluation allocate and free large temporary tensors. glibc's ``malloc``
serves blocks above its *mmap threshold* (dynamic, at most 32 MiB) with fresh ``mmap``
calls and returns free memory at the top of the heap above its *trim threshold* to the
OS, so the same megabytes are unmapped after one batch and faulted back in, page by page
and zero-filled, during the next. Evaluating W2's ``cnn`` in batches of 1,024 (134 MB of
activations per batch) took 1.5 million minor page faults and 7.2 CPU seconds per
evaluation that way, 4.2 s with :func:`retain_freed_memory` (``bench/allocator.py``,
docs/results/scale.md); whole training rounds gain less, within run-to-run noise. It
raises both thresholds, so freed blocks stay in the process and are reused: the numbers
computed are the same, and the process's resident memory stays near its peak instead of
shrinking.

It is process-wide and stays set (``mallopt`` disables glibc's dynamic threshold), so
fedweave applies it where clients train or models are evaluated — the driver (when its
executor starts: serial and vectorized training, evaluation), every ``Worker`` (so each
Ray actor and deployed client), a deployment's server — when ``executor.retain_memory``
is true (the default). Elsewhere than glibc
(macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # free memory at the top of the heap is returned only above 2 GiB (mallopt takes an int)

_applied = False


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring), once per
    process; True if they are set (now or before), False where the C library is not
    glibc or refuses."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # a value beyond an int raises, not wraps
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok
