"""Held-out splits: disjoint, complete, stable, and class-stratified/balanced."""

import numpy as np
import pytest

from fedweave.data import balanced_holdout, client_validation_split, stratified_holdout
from fedweave.errors import ConfigError

# Imbalanced labels: class c has 50 * (c + 1) examples.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(4), [50, 100, 150, 200]))


def check_split(keep, hold, universe):
    for a in (keep, hold):
        assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert np.intersect1d(keep, hold).size == 0
    assert np.array_equal(np.union1d(keep, hold), universe)


def test_stratified_counts_and_stability():
    keep, hold = stratified_holdout(LABELS, 0.2, seed=1)
    check_split(keep, hold, np.arange(LABELS.size))
    assert hold.size == 100
    assert np.bincount(LABELS[hold]).tolist() == [10, 20, 30, 40]
    keep2, hold2 = stratified_holdout(LABELS, 0.2, seed=1)
    assert np.array_equal(hold, hold2) and np.array_equal(keep, keep2)
    assert not np.array_equal(hold, stratified_holdout(LABELS, 0.2, seed=2)[1])


def test_stratified_total_is_rounded_fraction():
    labels = np.array([0] * 7 + [1] * 5 + [2] * 3)
    _, hold = stratified_holdout(labels, 1 / 3, seed=0)
    assert hold.size == 5


def test_stratified_exclude():
    exclude = np.arange(0, 500, 5)
    keep, hold = stratified_holdout(LABELS, 0.25, seed=0, exclude=exclude)
    check_split(keep, hold, np.setdiff1d(np.arange(LABELS.size), exclude))
    assert hold.size == 100


def test_balanced_counts():
    keep, hold = balanced_holdout(LABELS, 120, seed=0)
    check_split(keep, hold, np.arange(LABELS.size))
    assert np.bincount(LABELS[hold]).tolist() == [30, 30, 30, 30]
    # 250 cannot be split evenly past class 0's 50 examples: the rest is shared.
    _, hold = balanced_holdout(LABELS, 251, seed=0)
    counts = sorted(np.bincount(LABELS[hold]).tolist())
    assert counts[0] == 50 and sum(counts) == 251 and counts[-1] - counts[1] <= 1
    assert np.array_equal(hold, balanced_holdout(LABELS, 251, seed=0)[1])


def test_balanced_too_many():
    with pytest.raises(ConfigError, match="count"):
        balanced_holdout(LABELS, LABELS.size + 1, seed=0)


def test_bad_fraction():
    with pytest.raises(ConfigError):
        stratified_holdout(LABELS, 1.0, seed=0)
    with pytest.raises(ConfigError):
        client_validation_split([np.arange(5)], -0.1, seed=0)


def test_client_validation_split():
    parts = [np.arange(0, 10), np.arange(10, 12), np.arange(12, 13), np.arange(13, 113)]
    train, val = client_validation_split(parts, 0.1, seed=3)
    assert [v.size for v in val] == [1, 1, 0, 10]
    for p, t, v in zip(parts, train, val):
        check_split(t, v, p)
    train2, val2 = client_validation_split(parts, 0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(val, val2))
    # A client's split does not depend on the other clients' data.
    other = [np.arange(500, 600), np.arange(600, 610), np.arange(700, 720), parts[3]]
    _, val_other = client_validation_split(other, 0.1, seed=3)
    assert np.array_equal(val_other[3], val[3])
    _, val_zero = client_validation_split(parts, 0.0, seed=3)
    assert all(v.size == 0 for v in val_zero)
