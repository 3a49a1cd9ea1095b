"""Deterministic held-out splits: test split, server split, client validation.

All functions take an integer ``seed`` (not a Generator) so that a split is a
pure function of its arguments and can be recomputed from a config. They
return sorted int64 index arrays that are disjoint and, together, cover the
indices they were given.
"""

from __future__ import annotations

import numpy as np

from fedweave.data._checks import (
    as_labels,
    check_fraction,
    check_int,
    largest_remainder,
    round_half_up,
)
from fedweave.core.errors import ConfigError


def _available(labels: np.ndarray, exclude) -> np.ndarray:
    """Positions of ``labels`` that are not in ``exclude`` (sorted int64)."""
    n = labels.shape[0]
    if exclude is None:
        return np.arange(n, dtype=np.int64)
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if exclude.size and (exclude.min() < 0 or exclude.max() >= n):
        raise ConfigError(f"exclude holds indices outside 0..{n - 1}.")
    mask = np.ones(n, dtype=bool)
    mask[exclude] = False
    return np.flatnonzero(mask).astype(np.int64)


def _take_per_class(labels, avail, quota, rng) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``quota[c]`` random examples of each class c among ``avail``.

    Vectorized: shuffle, stable-sort by class (random order within a class),
    then keep the first quota[c] of each class run.
    """
    perm = avail[rng.permutation(avail.size)]
    by_class = perm[np.argsort(labels[perm], kind="stable")]
    cls = labels[by_class]
    counts = np.bincount(cls, minlength=quota.size)
    starts = np.cumsum(counts) - counts
    rank = np.arange(by_class.size) - starts[cls]
    chosen = rank < quota[cls]
    return np.sort(by_class[~chosen]), np.sort(by_class[chosen])


def stratified_holdout(
    labels, fraction: float, seed: int, exclude=None
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * N)`` examples, stratified by class.

    Each class contributes in proportion to its frequency (rounded with the
    largest-remainder rule so the total is exact). Indices in ``exclude`` (for
    example a split taken earlier) are neither kept nor held out, and ``N``
    counts only the remaining ones.

    Returns ``(keep_idx, holdout_idx)``: sorted, disjoint int64 arrays whose
    union is every index not in ``exclude``.
    """
    labels = as_labels(labels)
    fraction = check_fraction(fraction, "fraction")
    avail = _available(labels, exclude)
    total = round_half_up(fraction * avail.size)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    counts = np.bincount(labels[avail], minlength=num_classes)
    quota = largest_remainder(counts, total)
    return _take_per_class(labels, avail, quota, np.random.default_rng(seed))


def _balanced_quota(counts: np.ndarray, total: int, rng) -> np.ndarray:
    """As-equal-as-possible per-class quotas summing to ``total`` (water filling).

    Classes with fewer examples than the fair share give all they have; the
    rest share what is left equally, and the last few units go to randomly
    chosen classes that still have room.
    """
    quota = np.zeros_like(counts)
    active = np.flatnonzero(counts > 0)
    left = total
    while left > 0 and active.size:
        share = left // active.size
        small = active[counts[active] <= share]
        if small.size:  # these classes are exhausted; redistribute the rest
            quota[small] = counts[small]
            left -= int(counts[small].sum())
            active = np.setdiff1d(active, small)
            continue
        quota[active] = share
        left -= share * active.size
        # Every active class has more than `share`, so each can take one more.
        lucky = rng.choice(active, size=left, replace=False)
        quota[lucky] += 1
        left = 0
    return quota


def balanced_holdout(
    labels, count: int, seed: int, exclude=None
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``count`` examples with as equal a number per class as possible.

    Used for the server-held split, where a class-balanced set makes the
    server's evaluation (or distillation) unbiased toward frequent classes.
    Classes too small for the fair share contribute all their examples.
    ``exclude`` works as in :func:`stratified_holdout`.

    Returns ``(keep_idx, holdout_idx)``, sorted, disjoint, covering the
    non-excluded indices.
    """
    labels = as_labels(labels)
    avail = _available(labels, exclude)
    count = check_int(count, "count", low=0, high=avail.size)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels[avail], minlength=num_classes)
    quota = _balanced_quota(counts, count, rng)
    return _take_per_class(labels, avail, quota, rng)


def client_validation_split(
    client_indices: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out part of each client's own examples for local validation.

    Client ``k`` with ``n_k`` examples holds out ``round(fraction * n_k)`` of
    them at random, at least one when ``fraction > 0`` and ``n_k >= 2``, and
    never all of them (a client keeps at least one training example). Each
    client uses its own generator, seeded by ``(seed, k)``, so its split does
    not depend on the other clients.

    Returns ``(train_parts, val_parts)``, one sorted int64 array per client;
    for each client the two are disjoint and cover its input indices.
    """
    fraction = check_fraction(fraction, "validation fraction")
    train_parts, val_parts = [], []
    for k, idx in enumerate(client_indices):
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n_k = idx.size
        n_val = round_half_up(fraction * n_k)
        if fraction > 0 and n_k >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, max(n_k - 1, 0))
        perm = np.random.default_rng([seed, k]).permutation(idx)
        val_parts.append(np.sort(perm[:n_val]))
        train_parts.append(np.sort(perm[n_val:]))
    return train_parts, val_parts
