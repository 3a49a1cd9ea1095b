"""Partitioners: how a training set is dealt out to simulated clients.

Every partitioner returns ``list[np.ndarray]``: one sorted int64 array of example
positions (0..N-1) per client. The arrays are disjoint and together cover every
example exactly once, and the result depends only on the arguments (including
``seed``), so a run can be reproduced from its config.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from fedweave.data._checks import (
    as_labels,
    check_int,
    group_by_owner,
    largest_remainder,
)
from fedweave.core.errors import ConfigError, DataError, unknown_name

PARTITIONERS: dict[str, str] = {
    "iid": "uniformly random, equal-sized clients (sizes differ by at most one)",
    "dirichlet": "label skew: each class is spread over clients with Dirichlet(alpha) "
    "proportions; smaller alpha = more skew",
    "shards": "McMahan et al.: sort by label, cut into shards, give each client "
    "shards_per_client random shards",
    "classes": "each client holds exactly classes_per_client classes, each class "
    "split evenly among its holders",
    "quantity": "quantity skew: iid labels, client sizes from lognormal(0, sigma)",
    "natural": "the source's own per-client split (synthetic, npz with client_id)",
}

# Resampling attempts before dirichlet() falls back to its repair step. Each
# attempt is O(N + classes * clients), so this bounds the cost; the repair step
# makes the result valid whatever the attempts produced.
_DIRICHLET_ATTEMPTS = 20


def _check_num_clients(num_clients, n: int) -> int:
    if n < 1:
        raise DataError("Cannot partition an empty data set (0 training examples).")
    return check_int(num_clients, "num_clients", low=1, high=n)


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def iid(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``n`` examples and cut them into ``num_clients`` near-equal parts."""
    n = check_int(n, "n", low=0)
    num_clients = _check_num_clients(num_clients, n)
    perm = _rng(seed).permutation(n)
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, num_clients)]


def _dirichlet_owner(labels, class_idx, num_clients, alpha, rng) -> np.ndarray:
    """One Dirichlet draw: owner[i] = client of example i."""
    owner = np.empty(labels.shape[0], dtype=np.int64)
    clients = np.arange(num_clients)
    for idx in class_idx:
        p = rng.dirichlet(np.full(num_clients, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:
            # Very small alpha can underflow every gamma draw; the limit of
            # Dir(alpha -> 0) is a point mass on one random client.
            p = np.zeros(num_clients)
            p[rng.integers(num_clients)] = 1.0
        counts = largest_remainder(p, idx.size)
        owner[rng.permutation(idx)] = np.repeat(clients, counts)
    return owner


def _repair_min_size(owner, labels, num_clients, min_size, num_classes) -> np.ndarray:
    """Move examples so every client has at least ``min_size`` (deterministic).

    Clients below ``min_size`` are served in order of client id; each takes from
    the client that currently has the most examples, and the donor gives away
    examples of the classes it holds most of, which keeps the label skew that
    the Dirichlet draw created. The loop runs once per (receiver, donor) chunk,
    not per example, and always terminates because the caller ensured
    ``N >= num_clients * min_size`` (total surplus >= total deficit).
    """
    owner = owner.copy()
    sizes = np.bincount(owner, minlength=num_clients)
    # Max-heap of donors keyed by size (ties to lower client id).
    heap = [(-int(s), int(c)) for c, s in enumerate(sizes) if s > min_size]
    heapq.heapify(heap)
    for receiver in np.flatnonzero(sizes < min_size):
        need = min_size - int(sizes[receiver])
        while need > 0:
            neg_size, donor = heapq.heappop(heap)
            if -neg_size != sizes[donor]:  # stale entry; push the current size back
                if sizes[donor] > min_size:
                    heapq.heappush(heap, (-int(sizes[donor]), donor))
                continue
            take = min(need, int(sizes[donor]) - min_size)
            members = np.flatnonzero(owner == donor)
            member_labels = labels[members]
            class_count = np.bincount(member_labels, minlength=num_classes)
            # Order the donor's examples by (most common class first, class id);
            # lexsort's last key is the primary one.
            order = np.lexsort((member_labels, -class_count[member_labels]))
            owner[members[order[:take]]] = receiver
            sizes[donor] -= take
            sizes[receiver] += take
            need -= take
            if sizes[donor] > min_size:
                heapq.heappush(heap, (-int(sizes[donor]), donor))
    return owner


def dirichlet(
    labels, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Label-skewed partition: each class is spread over clients by Dir(alpha).

    For every class, client proportions are drawn from a symmetric Dirichlet
    with concentration ``alpha`` (large alpha -> near iid, small alpha -> each
    class lives on a few clients). Like the usual implementation, the draw is
    repeated until every client has at least ``min_size`` examples, but only a
    bounded number of times: if no draw succeeds, the draw with the smallest
    total shortfall is repaired by moving examples from the largest clients
    (their most common classes first) to the small ones. So the function always
    terminates, even for e.g. 500 clients with alpha 0.05.

    Raises DataError when ``N < num_clients * min_size`` (no partition exists).
    """
    labels = as_labels(labels)
    n = labels.shape[0]
    num_clients = _check_num_clients(num_clients, n)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a number > 0; got {alpha!r}.") from None
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be a finite number > 0; got {alpha}.")
    min_size = check_int(min_size, "min_size", low=0)
    if n < num_clients * min_size:
        raise DataError(
            f"Cannot give each of {num_clients} clients at least min_size={min_size} "
            f"examples: that needs {num_clients * min_size} examples but the training "
            f"set has {n}. Lower num_clients or min_size."
        )
    rng = _rng(seed)
    num_classes = int(labels.max()) + 1
    # Positions of each class, computed once and reused by every attempt.
    order = np.argsort(labels, kind="stable")
    class_idx = [
        c for c in np.split(order, np.cumsum(np.bincount(labels))[:-1]) if c.size
    ]
    best, best_deficit = None, None
    for _ in range(_DIRICHLET_ATTEMPTS):
        owner = _dirichlet_owner(labels, class_idx, num_clients, alpha, rng)
        sizes = np.bincount(owner, minlength=num_clients)
        deficit = int(np.clip(min_size - sizes, 0, None).sum())
        if best_deficit is None or deficit < best_deficit:
            best, best_deficit = owner, deficit
        if deficit == 0:
            break
    if best_deficit:
        best = _repair_min_size(best, labels, num_clients, min_size, num_classes)
    return group_by_owner(best, num_clients)


def shards(labels, num_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """McMahan et al. (2017) pathological non-iid split.

    Examples are sorted by label (ties in random order), cut into
    ``num_clients * shards_per_client`` contiguous shards whose sizes differ by
    at most one (so no example is left over), and every client receives
    ``shards_per_client`` random shards. When class sizes are multiples of the
    shard size a client sees at most ``shards_per_client`` classes.
    """
    labels = as_labels(labels)
    n = labels.shape[0]
    num_clients = _check_num_clients(num_clients, n)
    shards_per_client = check_int(shards_per_client, "shards_per_client", low=1)
    num_shards = num_clients * shards_per_client
    if num_shards > n:
        raise ConfigError(
            f"num_clients * shards_per_client = {num_shards} shards, but there are only "
            f"{n} examples; lower shards_per_client (at most {n // num_clients})."
        )
    rng = _rng(seed)
    perm = rng.permutation(n)
    by_label = perm[np.argsort(labels[perm], kind="stable")]
    # shard_of[j] = shard of the j-th example in label order.
    shard_sizes = np.full(num_shards, n // num_shards)
    shard_sizes[: n % num_shards] += 1
    shard_of = np.repeat(np.arange(num_shards), shard_sizes)
    client_of_shard = np.empty(num_shards, dtype=np.int64)
    client_of_shard[rng.permutation(num_shards)] = np.repeat(
        np.arange(num_clients), shards_per_client
    )
    owner = np.empty(n, dtype=np.int64)
    owner[by_label] = client_of_shard[shard_of]
    return group_by_owner(owner, num_clients)


def classes(labels, num_clients: int, classes_per_client: int, seed: int) -> list[np.ndarray]:
    """Each client holds exactly ``classes_per_client`` distinct classes.

    Classes are put in a random order and dealt round-robin: client ``i`` gets
    the classes at positions ``i*k .. i*k+k-1`` (mod the number of classes), so
    every class is held by some client whenever ``num_clients * k >= classes``
    and the holders per class differ by at most one. Each class's examples are
    then split randomly into near-equal parts among its holders.

    Raises DataError when some class would have no holder (its examples could
    not be assigned) or has fewer examples than holders.
    """
    labels = as_labels(labels)
    n = labels.shape[0]
    num_clients = _check_num_clients(num_clients, n)
    present = np.unique(labels)
    num_present = present.size
    k = check_int(classes_per_client, "classes_per_client", low=1, high=num_present)
    if num_clients * k < num_present:
        raise DataError(
            f"num_clients * classes_per_client = {num_clients} * {k} = {num_clients * k} "
            f"class slots, but the data has {num_present} classes, so the examples of "
            f"{num_present - num_clients * k} classes would belong to no client. Raise "
            f"num_clients or classes_per_client so their product is at least {num_present}."
        )
    rng = _rng(seed)
    class_order = present[rng.permutation(num_present)]
    # held[i, j] = j-th class of client i.
    slots = (np.arange(num_clients)[:, None] * k + np.arange(k)[None, :]) % num_present
    held = class_order[slots]
    owner = np.empty(n, dtype=np.int64)
    # Loop over classes (few), vectorized over examples.
    for c in present:
        holders = np.flatnonzero((held == c).any(axis=1))
        idx = np.flatnonzero(labels == c)
        if idx.size < holders.size:
            raise DataError(
                f"Class {int(c)} has {idx.size} examples but {holders.size} clients hold "
                f"it, so some would get none of it. Lower num_clients or "
                f"classes_per_client, or use the 'shards' or 'dirichlet' partition."
            )
        sizes = np.full(holders.size, idx.size // holders.size)
        sizes[: idx.size % holders.size] += 1
        owner[rng.permutation(idx)] = np.repeat(holders, sizes)
    return group_by_owner(owner, num_clients)


def quantity(
    n: int, num_clients: int, seed: int, sigma: float = 1.0, min_size: int = 1
) -> list[np.ndarray]:
    """Quantity skew: iid labels, client sizes drawn from lognormal(0, sigma).

    Every client first gets ``min_size`` examples; the rest are shared in
    proportion to the lognormal weights (rounded so the sizes sum to ``n``).
    ``sigma = 0`` gives equal sizes. Raises DataError when
    ``n < num_clients * min_size``.
    """
    n = check_int(n, "n", low=0)
    num_clients = _check_num_clients(num_clients, n)
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"sigma must be a number >= 0; got {sigma!r}.") from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"sigma must be a finite number >= 0; got {sigma}.")
    min_size = check_int(min_size, "min_size", low=0)
    if n < num_clients * min_size:
        raise DataError(
            f"Cannot give each of {num_clients} clients at least min_size={min_size} "
            f"examples: that needs {num_clients * min_size} but there are {n}. Lower "
            f"num_clients or min_size."
        )
    rng = _rng(seed)
    weights = rng.lognormal(0.0, sigma, num_clients)
    sizes = min_size + largest_remainder(weights, n - num_clients * min_size)
    perm = rng.permutation(n)
    return [np.sort(p).astype(np.int64) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def natural(client_ids) -> list[np.ndarray]:
    """The source's own split: one client per distinct id, in sorted id order."""
    ids = np.asarray(client_ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise DataError(
            f"client_ids must be a 1-D integer array; got dtype {ids.dtype}, shape {ids.shape}."
        )
    if ids.size == 0:
        raise DataError("Cannot partition an empty data set (0 training examples).")
    uniq, inverse = np.unique(ids, return_inverse=True)
    return group_by_owner(inverse.reshape(-1).astype(np.int64), uniq.size)


def partition(
    kind: str,
    labels,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    min_size: int = 10,
    shards_per_client: int = 2,
    classes_per_client: int = 2,
    sigma: float = 1.0,
    client_ids=None,
) -> list[np.ndarray]:
    """Partition ``labels`` (one class id per training example) by ``kind``.

    ``kind`` is a key of :data:`PARTITIONERS`. Only the keyword arguments that
    the chosen kind uses are read (``min_size`` by ``dirichlet`` and
    ``quantity``). For ``natural``, ``client_ids``
    must be given and ``num_clients`` must equal its number of distinct ids.
    """
    if kind not in PARTITIONERS:
        raise unknown_name("partition kind", kind, PARTITIONERS)
    labels = as_labels(labels)
    n = labels.shape[0]
    if kind == "natural":
        if client_ids is None:
            raise ConfigError(
                "The 'natural' partition needs the data source's own per-client split, "
                "but this source has none. Sources with one: synthetic, npz with a "
                "'client_id' array. Choose another partition kind (e.g. dirichlet)."
            )
        ids = np.asarray(client_ids)
        if ids.shape != (n,):
            raise DataError(
                f"client_ids has shape {ids.shape} but there are {n} labels; they must match."
            )
        parts = natural(ids)
        if num_clients != len(parts):
            raise ConfigError(
                f"The natural split of this source has {len(parts)} clients, but "
                f"num_clients is {num_clients}. Set num_clients to {len(parts)}."
            )
        return parts
    if kind == "iid":
        return iid(n, num_clients, seed)
    if kind == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed, min_size=min_size)
    if kind == "shards":
        return shards(labels, num_clients, shards_per_client, seed)
    if kind == "classes":
        return classes(labels, num_clients, classes_per_client, seed)
    return quantity(n, num_clients, seed, sigma=sigma, min_size=min_size)
