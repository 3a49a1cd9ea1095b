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

from ..rng import numpy_rng


def select_clients(kind: str, round_: int, num_clients: int, k: int, seed: int, sizes: np.ndarray, rate: float | None = None) -> list[int]:
    rng = numpy_rng(seed, "select", round_)
    if kind == "uniform":
        chosen = rng.choice(num_clients, size=k, replace=False)
    elif kind == "weighted":
        p = sizes.astype(np.float64) / sizes.sum()
        chosen = rng.choice(num_clients, size=k, replace=False, p=p)
    elif kind == "poisson":
        chosen = np.flatnonzero(rng.random(num_clients) < rate)
    else:
        raise ValueError(f"unknown sampling {kind!r}")
    return sorted(int(c) for c in chosen)
