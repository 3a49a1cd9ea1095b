"""Krum, Multi-Krum and Bulyan against hand computations and a plain-Python reference."""

from __future__ import annotations

import pytest
import torch

from fedweave.aggregate import bulyan, bulyan_select, krum, krum_scores, krum_select


def col(values):
    """1-D points as a [K, 1] tensor."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_krum_scores_on_five_points_in_1d():
    # Points 0, 1, 3, 4.5, 10 with f = 1: each scored by its K - f - 2 = 2 nearest.
    #   0   : d^2 to 1, 3, 4.5, 10 = 1, 9, 20.25, 100   -> 1 + 9        = 10
    #   1   : 1, 4, 12.25, 81                          -> 1 + 4        = 5
    #   3   : 9, 4, 2.25, 49                           -> 2.25 + 4     = 6.25
    #   4.5 : 20.25, 12.25, 2.25, 30.25                -> 2.25 + 12.25 = 14.5
    #   10  : 100, 81, 49, 30.25                       -> 30.25 + 49   = 79.25
    u = col([0, 1, 3, 4.5, 10])
    assert krum_scores(u, 1).tolist() == [10.0, 5.0, 6.25, 14.5, 79.25]
    assert krum(u, 1).tolist() == [1.0]  # lowest score: the point 1
    # Multi-Krum: the 2 best are 1 and 3 -> 2; the 3 best add 0 -> 4/3.
    assert krum(u, 1, num_selected=2).tolist() == [2.0]
    assert krum(u, 1, num_selected=3).tolist() == pytest.approx([4 / 3])
    assert krum_select(u, 1, 3).tolist() == [1, 2, 0]


def test_krum_ties_go_to_the_lower_index():
    # Points 0, 1, 2, 3, 10, f = 1: scores 1+4, 1+1, 1+1, 1+4, 49+64 = [5, 2, 2, 5, 113].
    u = col([0, 1, 2, 3, 10])
    assert krum_scores(u, 1).tolist() == [5.0, 2.0, 2.0, 5.0, 113.0]
    assert krum(u, 1).tolist() == [1.0]
    assert krum_select(u, 1, 4).tolist() == [1, 2, 0, 3]


def test_krum_picks_from_the_honest_cluster():
    # Five honest updates around the origin, two colluding attackers far away; f = 2, K = 7.
    honest = [[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]
    attackers = [[100, 100], [100, 101]]
    u = torch.tensor(honest + attackers, dtype=torch.float64)
    # K - f - 2 = 3 neighbours. Origin: 1 + 1 + 1 = 3. (1, 0): 1 (origin) + 2 + 2 = 5, and
    # alike for the other unit points. Each attacker: 1 + two distances of about 2e4.
    scores = krum_scores(u, 2)
    assert scores[:5].tolist() == [3.0, 5.0, 5.0, 5.0, 5.0]
    assert scores[5:].min() > 1e4
    assert krum(u, 2).tolist() == [0.0, 0.0]
    # Multi-Krum over the 5 best: exactly the honest ones, whose mean is the origin.
    assert sorted(krum_select(u, 2, 5).tolist()) == [0, 1, 2, 3, 4]
    assert krum(u, 2, num_selected=5).tolist() == [0.0, 0.0]


def test_krum_errors():
    u = col([0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"K > 2f \+ 2.*K=6, f=2"):
        krum(u, 2)  # 6 <= 2*2 + 2
    with pytest.raises(ValueError, match="num_selected"):
        krum(u, 1, num_selected=7)
    with pytest.raises(ValueError, match="num_selected"):
        krum(u, 1, num_selected=0)
    with pytest.raises(ValueError, match="num_malicious"):
        krum(u, -1)
    with pytest.raises(ValueError, match="K = 0"):
        krum(torch.empty(0, 3), 0)


def test_bulyan_by_hand_k7_f1():
    # Points 0, 1, 2, 3, 4, 5, 100 with f = 1: theta = 7 - 2 = 5 selected, beta = 3 kept.
    # Selection by repeated Krum (neighbours = n - f - 2, at least 1):
    #   n=7, 4 nbrs: scores 0:30 1:15 2:10 3:10 4:15 5:30 100:huge -> 2 (tie, lower index)
    #   n=6, 3 nbrs: 0:1+9+16=26 1:1+4+9=14 3:1+4+4=9 4:1+1+9=11 5:1+4+16=21 -> 3
    #   n=5, 2 nbrs: 0:1+16=17 1:1+9=10 4:1+9=10 5:1+16=17 -> 1 (tie, lower index)
    #   n=4, 1 nbr : 0:16 4:1 5:1 -> 4
    #   n=3, 1 nbr : 0:25 5:25 100:9025 -> 0
    # Selected values 2, 3, 1, 4, 0; median 2; the 3 closest are 2, 3, 1 -> mean 2.
    u = col([0, 1, 2, 3, 4, 5, 100])
    assert bulyan_select(u, 1) == [2, 3, 1, 4, 0]
    assert bulyan(u, 1).tolist() == [2.0]


def reference_bulyan(rows: list[list[float]], f: int) -> list[float]:
    """Bulyan step by step with plain Python loops and the documented tie rules."""
    k, p = len(rows), len(rows[0])

    def dist(i, j):
        return sum((rows[i][c] - rows[j][c]) ** 2 for c in range(p))

    remaining, selected = list(range(k)), []
    while len(selected) < k - 2 * f:
        n = len(remaining)
        nbrs = min(max(n - f - 2, 1), n - 1)
        best, best_score = None, None
        for i in remaining:
            ds = sorted(dist(i, j) for j in remaining if j != i)
            score = sum(ds[:nbrs])
            if best_score is None or score < best_score:  # strict: first minimum wins
                best, best_score = i, score
        selected.append(best)
        remaining.remove(best)

    beta = len(selected) - 2 * f
    out = []
    for c in range(p):
        values = [rows[i][c] for i in selected]
        s = sorted(values)
        m = len(s)
        med = s[m // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2
        # Closest to the median first; ties by selection order (sorted() is stable).
        closest = sorted(range(m), key=lambda r: abs(values[r] - med))[:beta]
        out.append(sum(values[r] for r in closest) / beta)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("k", "f"), [(7, 1), (8, 1), (11, 2)])
def test_bulyan_matches_plain_python_reference(seed, k, f):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(k, 4, generator=gen, dtype=torch.float64)
    u[:f] += 50.0  # f attackers far away
    expected = reference_bulyan(u.tolist(), f)
    assert bulyan(u, f).tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # Whatever the selection, the coordinate-wise trimming keeps the result honest.
    assert bulyan(u, f).abs().max() < 5.0


def test_bulyan_needs_4f_plus_3():
    with pytest.raises(ValueError, match=r"Bulyan needs K >= 4f \+ 3.*K=6, f=1"):
        bulyan(col([0, 1, 2, 3, 4, 5]), 1)
    # f = 0 keeps every update and averages all of them: (0+1+2)/3 = 1.
    assert bulyan(col([0, 1, 2]), 0).tolist() == [1.0]
