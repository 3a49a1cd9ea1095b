"""Stable derivation of random seeds.

Every random choice in fedweave draws from a generator whose seed is derived from
``(run seed, purpose, client id, that client's job counter)`` through a stable hash
(BLAKE2b), never Python's ``hash()``, which changes from process to process. A client's
training therefore draws the same numbers whichever executor, process or machine runs it,
and in whatever order jobs are executed.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

_MASK63 = (1 << 63) - 1
# model initialisation draws from torch's global generator; one seeded build at a time, or
# two threads building at once (a loopback deployment's server and clients) interleave draws
_BUILD_LOCK = threading.RLock()


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed determined by ``seed``, a purpose string and integer keys."""
    text = f"{int(seed)}|{purpose}|" + "|".join(str(int(k)) for k in keys)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, purpose, *keys))


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, purpose, *keys))
    return gen


def uniform(shape, generator: torch.Generator | None, device: torch.device,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """U(0, 1) drawn where ``generator`` lives (a job's generator is a CPU one), then moved
    to ``device``: the same numbers whichever device the job trains on."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=dtype, device=where).to(device)


@contextmanager
def seeded_build(seed: int | None = None) -> Iterator[None]:
    """Seed torch's global generator for a model build (initialisation draws from it) and
    hold a process-wide lock until the build is done, so that builds in other threads
    cannot draw in between: the same seed gives the same model in any thread. Nestable;
    ``seed`` None only takes the lock (to hold it over several seeded builds)."""
    with _BUILD_LOCK:
        if seed is not None:
            torch.manual_seed(seed)
        yield


def seed_job_generators(seed: int, client_id: int, counter: int, device: torch.device) -> None:
    """Seed the global generators a job's model may draw from (dropout and the like) from
    ``(seed, "torch", client id, job counter)``: the CPU generator, and on a CUDA device
    that device's generator too (``torch.manual_seed`` would walk every accelerator
    backend, ~60 µs a job). Under the build lock: in a loopback deployment a client thread
    starting a job must not reseed the generator while another client thread is still
    building its model (what remains unguarded: a job's own draws, such as dropout, during
    another thread's build — in-process threads only; real deployments are processes)."""
    job_seed = derive_seed(seed, "torch", client_id, counter)
    with _BUILD_LOCK:
        torch.default_generator.manual_seed(job_seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(job_seed)
