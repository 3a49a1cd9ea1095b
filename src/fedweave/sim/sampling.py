"""Client selection for a synchronous round.

* ``uniform``: K clients uniformly without replacement (the default);
* ``weighted``: K clients without replacement, with probability proportional to size;
* ``poisson``: every client independently with probability q (the cohort size varies;
  DP-FedAvg's sampling).

The generator is derived from ``(seed, "select", round)``, so a round's cohort does not
depend on anything that happened before it.
"""

from __future__ import annotations

import numpy as np

from ..core.rng import numpy_rng


def select_clients(
    kind: str, round_: int, num_clients: int, k: int, seed: int, sizes: np.ndarray,
    rate: float | None = None, candidates: np.ndarray | None = None,
) -> list[int]:
    """The cohort of ``round_``; ``candidates`` restricts it to the clients online now."""
    rng = numpy_rng(seed, "select", round_)
    pool = np.arange(num_clients) if candidates is None else np.asarray(candidates)
    k = min(k, len(pool))
    if kind == "uniform":
        chosen = rng.choice(pool, size=k, replace=False)
    elif kind == "weighted":
        p = sizes[pool].astype(np.float64)
        chosen = rng.choice(pool, size=k, replace=False, p=p / p.sum())
    elif kind == "poisson":
        # draw for every client so that a client's draw does not depend on who is online
        draws = rng.random(num_clients)
        chosen = pool[draws[pool] < rate]
    else:
        raise ValueError(f"unknown sampling {kind!r}")
    return sorted(int(c) for c in chosen)


def pick_idle(seed: int, dispatch_no: int, idle: list[int]) -> int:
    """Async/buffered dispatch policy: uniform among idle, available clients."""
    return int(idle[numpy_rng(seed, "dispatch", dispatch_no).integers(len(idle))])
