"""Small synthetic federations built so that a method *must* show its effect, with the bound
that any method without that effect cannot beat, derived in each docstring. Each writes an
.npz file for the ``npz`` source (``x``, ``y``, ``client_id``: the natural partition)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(path: Path, x: np.ndarray, y: np.ndarray, client_id: np.ndarray) -> str:
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64), client_id=client_id.astype(np.int64))
    return str(path)


def flipped_labels(path: Path, clients: int = 4, per_client: int = 500, seed: int = 0) -> str:
    """Concept shift: x ~ N(0, I_2) for every client; y = [x_0 > 0] for even clients and
    [x_0 <= 0] for odd ones. Inputs are identically distributed and half the clients label
    every x the other way, so on data pooled from both halves ANY single model is right on
    at most half of each x's examples: its accuracy is at most 1/2 (plus sampling noise).
    A personal output layer can flip the shared features' answer: accuracy near 1."""
    rng = np.random.default_rng(seed)
    cid = np.repeat(np.arange(clients), per_client)
    x = rng.standard_normal((cid.size, 2))
    y = (x[:, 0] > 0).astype(np.int64) ^ (cid % 2)
    return _save(path, x, y, cid)


SHIFT = 0.68  # the offset that maximises the ambiguity below (2 phi(2b) = phi(b))


def shifted_features(path: Path, clients: int = 4, per_client: int = 500, seed: int = 0) -> str:
    """Feature shift: z ~ N(0, I_2), y = [z_0 > 0] for everyone, but client k sees
    x = z + b_k e_0 with b_k = +b for even and -b for odd clients. Pooled, x_0 in (-b, b)
    is labelled 1 by one half and 0 by the other: the best single model (the Bayes rule of
    the pooled data) is wrong on sum over the halves of P(z_0 in (0, 2b) or (-2b, 0)) / 2,
    i.e. its accuracy is at most 1 - (Phi(2b) - Phi(b)) = 0.839 at b = 0.68. A client's own
    normalisation statistics (FedBN) subtract its offset: accuracy near 1."""
    rng = np.random.default_rng(seed)
    cid = np.repeat(np.arange(clients), per_client)
    x = rng.standard_normal((cid.size, 2))
    y = (x[:, 0] > 0).astype(np.int64)
    x[:, 0] += np.where(cid % 2 == 0, SHIFT, -SHIFT)
    return _save(path, x, y, cid)


def robust_and_brittle_features(path: Path, n: int = 2000, brittle: int = 50, mu: float = 0.1,
                                noise: float = 0.3, seed: int = 0) -> str:
    """Tsipras et al. (ICLR 2019)'s construction: label s = ±1 (y = (s+1)/2); one robust
    feature x_0 = s, and ``brittle`` features x_j = s·mu + N(0, noise²), each weakly but
    together strongly predictive. Plain training of a linear model follows E[s x] =
    (1, mu, ..., mu), putting brittle·mu = 5 times more weight on the brittle features than
    on x_0: an L∞ attack of radius eps > mu shifts each brittle feature past zero, turning
    their sum against the label (margin 1 + brittle·mu² − eps(1 + brittle·mu) = −0.3 at
    eps = 0.3: most examples fall). Adversarial training at eps = 0.3 sees brittle features that point the wrong way
    and must rely on x_0, whose margin 1 survives any eps < 1: robust accuracy near 1."""
    rng = np.random.default_rng(seed)
    s = rng.choice([-1.0, 1.0], n)
    x = np.empty((n, 1 + brittle))
    x[:, 0] = s
    x[:, 1:] = s[:, None] * mu + noise * rng.standard_normal((n, brittle))
    return _save(path, x, (s > 0).astype(np.int64), np.arange(n) % 4)
