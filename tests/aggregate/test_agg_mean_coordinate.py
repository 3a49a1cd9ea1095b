"""weighted_mean, median, trimmed_mean and the geometry helpers on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from fedweave.aggregate import (
    clip_by_norm,
    cosine_similarity_rows,
    median,
    pairwise_sq_distances,
    trimmed_mean,
    weighted_mean,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# --- weighted_mean ---------------------------------------------------------------------


def test_weighted_mean_normalises_weights():
    u = t([[1, 2], [3, 4], [5, 6]])
    # Weights 1:1:2 -> 0.25, 0.25, 0.5:
    # [0.25*1 + 0.25*3 + 0.5*5, 0.25*2 + 0.25*4 + 0.5*6] = [3.5, 4.5]
    assert weighted_mean(u, t([1, 1, 2])).tolist() == [3.5, 4.5]
    # Sample counts work as weights; a zero weight ignores that client.
    assert weighted_mean(u, t([0, 0, 30])).tolist() == [5.0, 6.0]
    # Integer weights are accepted and cast.
    assert weighted_mean(u, torch.tensor([1, 1, 1])).tolist() == [3.0, 4.0]


def test_weighted_mean_errors():
    u = t([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="K = 0"):
        weighted_mean(torch.empty(0, 2), torch.empty(0))
    with pytest.raises(ValueError, match="shape"):
        weighted_mean(u, t([1, 2, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_mean(u, t([1, -1]))
    with pytest.raises(ValueError, match="all zero"):
        weighted_mean(u, t([0, 0]))
    with pytest.raises(ValueError, match=r"\[K, P\]"):
        weighted_mean(t([1, 2]), t([1, 1]))


# --- median ------------------------------------------------------------------------------


def test_median_odd_k():
    # Columns {1, 3, 2} -> 2 and {5, -1, 0} -> 0.
    assert median(t([[1, 5], [3, -1], [2, 0]])).tolist() == [2.0, 0.0]


def test_median_even_k_is_mean_of_middle_two():
    u = t([[4, 10], [1, -10], [3, 0], [2, 100]])
    # Column 0 sorted: 1 2 3 4 -> (2 + 3) / 2 = 2.5; column 1: -10 0 10 100 -> 5.
    assert median(u).tolist() == [2.5, 5.0]
    # torch.median would give the lower middle values instead.
    assert torch.median(u, dim=0).values.tolist() == [2.0, 0.0]


# --- trimmed_mean --------------------------------------------------------------------------


def test_trimmed_mean_beta_02_k5():
    # floor(0.2 * 5) = 1 value dropped at each end of each column.
    u = t([[1, -50], [2, 0], [3, 5], [4, 10], [100, 7]])
    # Column 0: drop 1 and 100 -> (2 + 3 + 4) / 3 = 3.
    # Column 1: sorted -50 0 5 7 10, drop -50 and 10 -> (0 + 5 + 7) / 3 = 4.
    assert trimmed_mean(u, 0.2).tolist() == [3.0, 4.0]
    # floor(0.1 * 5) = 0: the plain mean, (1+2+3+4+100)/5 = 22, (-50+0+5+10+7)/5 = -5.6.
    assert trimmed_mean(u, 0.1).tolist() == pytest.approx([22.0, -5.6])
    # beta = 0.5 with odd K keeps only the middle value: the median.
    assert trimmed_mean(u, 0.5).tolist() == [3.0, 5.0]


def test_trimmed_mean_rounding_and_errors():
    # 0.29 * 100 = 28.999999999999996 in floating point; floor(beta K) must still be 29.
    u = torch.arange(100, dtype=torch.float64)[:, None]
    # Keeps 29..70 -> mean 49.5 either way, so check the count through an asymmetric column.
    v = torch.cat([u, u**2], dim=1)
    kept = torch.arange(29, 71, dtype=torch.float64)
    assert trimmed_mean(v, 0.29)[1].item() == pytest.approx((kept**2).mean().item())
    with pytest.raises(ValueError, match="leaving none"):
        trimmed_mean(t([[1], [2], [3], [4]]), 0.5)  # drops 2 + 2 of 4
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        trimmed_mean(t([[1], [2], [3]]), -0.1)


# --- geometry ------------------------------------------------------------------------------


def test_pairwise_sq_distances():
    u = t([[0, 0], [3, 4], [1, 0]])
    # |(0,0)-(3,4)|^2 = 25, |(0,0)-(1,0)|^2 = 1, |(3,4)-(1,0)|^2 = 4 + 16 = 20.
    expected = [[0, 25, 1], [25, 0, 20], [1, 20, 0]]
    assert pairwise_sq_distances(u).tolist() == expected
    # A large common offset must not spoil float32 precision (the updates are centred).
    shifted = (u + 1e4).float()
    assert torch.allclose(pairwise_sq_distances(shifted), t(expected).float(), atol=1e-3)


def test_pairwise_sq_distances_match_direct_differences_and_are_symmetric():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(9, 50, generator=gen)
    d = pairwise_sq_distances(u)
    direct = ((u[:, None, :] - u[None, :, :]) ** 2).sum(dim=-1)
    assert torch.allclose(d, direct, rtol=1e-5, atol=1e-4)
    assert torch.equal(d, d.T)
    assert (d >= 0).all() and (d.diagonal() == 0).all()


def test_clip_by_norm():
    u = t([[3, 4], [0, 0], [0.3, 0.4]])
    before = u.clone()
    # Norms 5, 0, 0.5 with bound 1: the first row scales by 1/5, the others stay.
    out = clip_by_norm(u, 1.0)
    assert torch.allclose(out, t([[0.6, 0.8], [0.0, 0.0], [0.3, 0.4]]))
    assert torch.equal(u, before)  # input untouched
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_norm(u, 0.0)


def test_cosine_similarity_rows():
    a = t([[1, 0], [0, 2], [-3, 0], [0, 0], [1, 1]])
    # Against b = (2, 0): parallel 1, orthogonal 0, opposite -1, zero row 0, 45 degrees 1/sqrt 2.
    got = cosine_similarity_rows(a, t([2, 0]))
    assert got.tolist() == pytest.approx([1.0, 0.0, -1.0, 0.0, 1 / math.sqrt(2)])
    assert cosine_similarity_rows(a, t([0, 0])).tolist() == [0.0] * 5
    with pytest.raises(ValueError, match="shape"):
        cosine_similarity_rows(a, t([1, 2, 3]))
