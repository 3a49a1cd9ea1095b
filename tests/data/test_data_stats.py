"""Partition statistics."""

import numpy as np
import pytest

from fedweave.data import heterogeneity, label_histograms, partition_summary


def test_zero_for_identical_distributions():
    assert heterogeneity(np.array([[5, 5, 10], [1, 1, 2], [50, 50, 100]])) == 0.0


def test_hand_computed_value():
    # Global: [3, 1] / 4 = [0.75, 0.25].
    # Client 0 [2, 0] -> p = [1, 0]: TV = 0.5 * (0.25 + 0.25) = 0.25.
    # Client 1 [1, 1] -> p = [0.5, 0.5]: TV = 0.5 * (0.25 + 0.25) = 0.25.
    assert heterogeneity(np.array([[2, 0], [1, 1]])) == pytest.approx(0.25)
    # Disjoint single-class clients over C equal classes: 1 - 1/C.
    assert heterogeneity(np.eye(4) * 10) == pytest.approx(0.75)


def test_histograms_and_summary():
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 1]), np.array([2, 3, 4, 5])]
    hists = label_histograms(labels, parts, 4)
    assert hists.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]
    s = partition_summary(labels, parts, 4)
    assert s["num_clients"] == 2 and s["num_examples"] == 6
    assert s["sizes"] == {"min": 2, "mean": 3.0, "max": 4, "std": 1.0}
    assert s["client_sizes"] == [2, 4]
    assert s["histograms"] == hists.tolist()
    assert s["classes_per_client"]["max"] == 2
    assert s["heterogeneity"] == pytest.approx(heterogeneity(hists))
