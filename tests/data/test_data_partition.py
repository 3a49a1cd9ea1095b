"""Partitioners: disjoint, complete, deterministic, and shaped as documented."""

import time

import numpy as np
import pytest

from fedweave.data import (
    PARTITIONERS,
    classes,
    dirichlet,
    heterogeneity,
    iid,
    label_histograms,
    natural,
    partition,
    quantity,
    shards,
)
from fedweave.errors import ConfigError, DataError

N, C = 2000, 10
LABELS = np.random.default_rng(123).integers(0, C, N)


def check_valid(parts, n):
    """Each part is a sorted int64 array; together they cover 0..n-1 exactly once."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    allidx = np.concatenate(parts)
    assert allidx.size == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


KINDS = {
    "iid": dict(),
    "dirichlet": dict(alpha=0.5, min_size=5),
    "shards": dict(shards_per_client=2),
    "classes": dict(classes_per_client=3),
    "quantity": dict(sigma=1.0, min_size=1),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_valid_and_deterministic(kind):
    kw = KINDS[kind]
    a = partition(kind, LABELS, 20, 7, **kw)
    assert len(a) == 20
    check_valid(a, N)
    assert same(a, partition(kind, LABELS, 20, 7, **kw))
    assert not same(a, partition(kind, LABELS, 20, 8, **kw))


def test_every_kind_is_tested():
    assert set(KINDS) | {"natural"} == set(PARTITIONERS)


def test_iid_sizes_equal():
    sizes = [p.size for p in iid(103, 10, 0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_terminates_on_hard_case():
    labels = np.random.default_rng(0).integers(0, 10, 30_000)
    parts = dirichlet(labels, 500, 0.05, seed=1, min_size=10)
    check_valid(parts, labels.size)
    assert len(parts) == 500
    assert min(p.size for p in parts) >= 10
    # The repair keeps the partition strongly skewed.
    assert heterogeneity(label_histograms(labels, parts, 10)) > 0.6


@pytest.mark.timing
def test_dirichlet_hard_case_is_not_quadratic():
    """The repair moves chunks, not single examples: 0.04 s measured on a 2-core host; 10 s
    (~250x) trips only on an algorithmic regression, not on a busy machine."""
    labels = np.random.default_rng(0).integers(0, 10, 30_000)
    start = time.perf_counter()
    dirichlet(labels, 500, 0.05, seed=1, min_size=10)
    assert time.perf_counter() - start < 10


def test_dirichlet_impossible_min_size():
    with pytest.raises(DataError, match="needs 1100 examples"):
        dirichlet(np.zeros(1000, dtype=int), 110, 0.5, 0, min_size=10)


def test_heterogeneity_rises_as_alpha_falls():
    h = [
        heterogeneity(label_histograms(LABELS, dirichlet(LABELS, 20, a, 3, min_size=5), C))
        for a in (100.0, 1.0, 0.1)
    ]
    assert h[0] < h[1] < h[2]
    assert h[0] < 0.1


# -- the Dirichlet shape, against the moments of Dir(alpha) -----------------------------------------
# Class c's examples go to the K clients in proportions p ~ Dir(alpha, ..., alpha), rounded
# to counts (each off by less than one example). p_k ~ Beta(alpha, (K-1) alpha), so
#   E[p_k] = 1/K,   Var[p_k] = (1/K)(1 - 1/K) / (K alpha + 1),   E[sum_k p_k^2] = (alpha + 1) / (K alpha + 1).
# Tolerances are 6 standard deviations of the estimate (a false alarm has odds ~1e-9 per
# check) plus the rounding bound; min_size=0 so that no repair step reshapes the draw.

SHAPE_K, SHAPE_C, PER_CLASS = 10, 10, 200
SHAPE_LABELS = np.repeat(np.arange(SHAPE_C), PER_CLASS)


def _shares(alpha, seed):
    """[C, K] share of each class held by each client."""
    parts = dirichlet(SHAPE_LABELS, SHAPE_K, alpha, seed, min_size=0)
    counts = label_histograms(SHAPE_LABELS, parts, SHAPE_C)  # [K, C]
    return counts.T / PER_CLASS


def _share_var(alpha, k=SHAPE_K):
    return (1 / k) * (1 - 1 / k) / (k * alpha + 1)


def test_dirichlet_large_alpha_gives_every_client_about_n_over_k():
    alpha, n = 100.0, SHAPE_LABELS.size
    # size_k = sum_c n_c p_ck (+ rounding < 1 per class): Var = sum_c n_c^2 Var[p]
    sd = np.sqrt(SHAPE_C * PER_CLASS**2 * _share_var(alpha))  # 6.0 examples
    for seed in range(5):
        sizes = np.array([p.size for p in dirichlet(SHAPE_LABELS, SHAPE_K, alpha, seed, min_size=0)])
        assert sizes.sum() == n
        assert np.all(np.abs(sizes - n / SHAPE_K) <= 6 * sd + SHAPE_C), sizes


@pytest.mark.parametrize("alpha", [0.3, 5.0])
def test_dirichlet_class_shares_average_to_one_over_k(alpha):
    seeds = 100
    mean = np.mean([_shares(alpha, s) for s in range(seeds)], axis=0)  # [C, K]
    tol = 6 * np.sqrt(_share_var(alpha) / seeds) + 1 / PER_CLASS
    assert np.all(np.abs(mean - 1 / SHAPE_K) <= tol), (np.abs(mean - 1 / SHAPE_K).max(), tol)


def test_dirichlet_concentration_follows_alpha():
    """E[sum_k p_k^2] = (alpha+1)/(K alpha+1): 0.55, 0.18, 0.101 for alpha 0.1, 1, 100 —
    heterogeneity rises as alpha falls, by the amount the Dirichlet says."""
    seeds = 60
    for alpha in (0.1, 1.0, 100.0):
        sq = np.concatenate([(_shares(alpha, s) ** 2).sum(axis=1) for s in range(seeds)])  # one per (seed, class)
        expected = (alpha + 1) / (SHAPE_K * alpha + 1)
        # sum p^2 lies in [1/K, 1]: its sd is at most (1 - 1/K)/2; rounding moves it by < 2/n_c
        tol = 6 * (1 - 1 / SHAPE_K) / 2 / np.sqrt(sq.size) + 2 / PER_CLASS
        assert abs(sq.mean() - expected) <= tol, (alpha, sq.mean(), expected, tol)


def test_shards_classes_per_client():
    labels = np.repeat(np.arange(10), 100)  # sorted, 100 per class
    parts = shards(labels, 20, 2, 0)  # 40 shards of 25: never straddle a class
    check_valid(parts, labels.size)
    for p in parts:
        assert p.size == 50
        assert np.unique(labels[p]).size <= 2


def test_shards_remainder_complete():
    parts = shards(LABELS[:1003], 7, 3, 0)
    check_valid(parts, 1003)


def test_classes_exactly_k():
    parts = classes(LABELS, 15, 3, 0)
    check_valid(parts, N)
    for p in parts:
        assert np.unique(LABELS[p]).size == 3


def test_classes_uncovered_class_is_error():
    with pytest.raises(DataError, match="no client"):
        classes(LABELS, 4, 2, 0)


def test_quantity_min_size_and_skew():
    parts = quantity(5000, 50, 0, sigma=2.0, min_size=20)
    check_valid(parts, 5000)
    sizes = np.array([p.size for p in parts])
    assert sizes.min() >= 20
    assert sizes.max() > 3 * sizes.min()


def test_natural_groups_by_sorted_id():
    ids = np.array([5, 2, 5, 9, 2, 2])
    parts = natural(ids)
    assert [p.tolist() for p in parts] == [[1, 4, 5], [0, 2], [3]]
    assert same(parts, partition("natural", np.zeros(6, int), 3, 0, client_ids=ids))


def test_natural_needs_client_ids():
    with pytest.raises(ConfigError, match="synthetic"):
        partition("natural", LABELS, 10, 0)
    with pytest.raises(ConfigError, match="Set num_clients to 3"):
        partition("natural", np.zeros(6, int), 4, 0, client_ids=np.array([0, 1, 2, 0, 1, 2]))


@pytest.mark.parametrize(
    "kind, kw, match",
    [
        ("nope", {}, "Unknown partition kind"),
        ("dirichlet", {"alpha": 0}, "alpha"),
        ("dirichlet", {"alpha": -1.0}, "alpha"),
        ("iid", {"num_clients": 0}, "num_clients"),
        ("iid", {"num_clients": N + 1}, "num_clients"),
        ("shards", {"shards_per_client": 0}, "shards_per_client"),
        ("classes", {"classes_per_client": 11}, "classes_per_client"),
        ("quantity", {"sigma": -1}, "sigma"),
    ],
)
def test_config_errors(kind, kw, match):
    kw = dict(kw)
    num_clients = kw.pop("num_clients", 10)
    with pytest.raises(ConfigError, match=match):
        partition(kind, LABELS, num_clients, 0, **kw)
