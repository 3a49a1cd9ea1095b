"""Distance-based Byzantine-robust aggregation: Krum, Multi-Krum and Bulyan.

Krum (Blanchard et al. 2017, *Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent*, NeurIPS). Of K updates, up to f may be Byzantine. Each update i is
scored by the summed squared distances to its K - f - 2 nearest other updates,

    s(i) = sum_{j in N_i} ||u_i - u_j||^2,   N_i = the K - f - 2 closest j != i,

and Krum returns the update with the lowest score. It needs K > 2f + 2 (K - f - 2 >= 1
neighbours among the honest majority). Multi-Krum returns the mean of the m lowest-score
updates (m = 1 is Krum).

Bulyan (El Mhamdi, Guerraoui & Rouault 2018, *The Hidden Vulnerability of Distributed
Learning in Byzantium*, ICML) needs K >= 4f + 3:

1. selection: apply Krum repeatedly, each time removing the chosen update from the set and
   rescoring the rest, until theta = K - 2f updates are selected;
2. aggregation: per coordinate p, keep the beta = theta - 2f selected values closest to the
   coordinate-wise median of the selection and average them.

Conventions: ties in scores go to the lower row index (the earlier client). During
Bulyan's selection the shrinking set can leave K' - f - 2 < 1 neighbours near the bound
K = 4f + 3; we then keep one neighbour (or none when a single update remains) so that the
choice stays distance-based rather than arbitrary. In step 2 the median of an even number
of values is the mean of the middle two (see :func:`fedweave.aggregate.median`), and ties
in the distance to it go to the update selected first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedweave.aggregate._checks import check_count, check_updates
from fedweave.aggregate.coordinate import median, sort_rows_, sorted_rows
from fedweave.aggregate.geometry import pairwise_sq_distances


def _scores_from_distances(dist: Tensor, num_neighbors: int) -> Tensor:
    """Sum of the ``num_neighbors`` smallest off-diagonal entries of each row of ``dist``."""
    k = dist.shape[0]
    if num_neighbors <= 0 or k <= 1:
        return dist.new_zeros(k)
    # Exclude i itself by putting +inf on the diagonal, then take the smallest per row.
    off = dist.clone()
    off.fill_diagonal_(float("inf"))
    return off.topk(num_neighbors, dim=1, largest=False).values.sum(dim=1)


def krum_scores(updates: Tensor, num_malicious: int) -> Tensor:
    """Krum scores ``[K]``: summed squared distances to the K - f - 2 nearest other rows.

    Raises ValueError when K - f - 2 < 1 (no neighbour to score against).
    """
    check_updates(updates)
    f = check_count(num_malicious, "num_malicious")
    k = updates.shape[0]
    if k - f - 2 < 1:
        raise ValueError(
            f"Krum scores need K - f - 2 >= 1 neighbours, got K={k}, f={f}."
        )
    return _scores_from_distances(pairwise_sq_distances(updates), k - f - 2)


def _check_krum_bound(k: int, f: int) -> None:
    if k <= 2 * f + 2:
        raise ValueError(
            f"Krum needs K > 2f + 2 clients to tolerate f Byzantine ones: got K={k}, f={f} "
            f"(at least {2 * f + 3} clients are needed)."
        )


def krum_select(updates: Tensor, num_malicious: int, num_selected: int = 1) -> Tensor:
    """Row indices ``[num_selected]`` of the lowest Krum scores, best first."""
    check_updates(updates)
    f = check_count(num_malicious, "num_malicious")
    k = updates.shape[0]
    _check_krum_bound(k, f)
    m = check_count(num_selected, "num_selected", minimum=1)
    if m > k:
        raise ValueError(f"num_selected must be between 1 and K={k}, got {m}.")
    scores = krum_scores(updates, f)
    # A stable sort breaks ties by row index, so selection is deterministic.
    return torch.argsort(scores, stable=True)[:m]


def krum(updates: Tensor, num_malicious: int, num_selected: int = 1) -> Tensor:
    """Krum (``num_selected=1``) or Multi-Krum aggregate ``[P]`` of ``updates`` ``[K, P]``.

    Multi-Krum returns the mean of the ``num_selected`` lowest-score updates. Raises
    ValueError when K <= 2f + 2 or ``num_selected`` is not in ``[1, K]``.
    """
    chosen = krum_select(updates, num_malicious, num_selected)
    if len(chosen) == 1:
        return updates[int(chosen[0])].clone()
    # the mean of the chosen rows as one pass over the input (no [m, P] copy)
    indicator = torch.zeros(updates.shape[0], dtype=updates.dtype, device=updates.device)
    indicator[chosen] = 1.0
    return (indicator @ updates) / len(chosen)


def bulyan_select(updates: Tensor, num_malicious: int) -> list[int]:
    """Bulyan's selection: row indices of theta = K - 2f updates picked by repeated Krum."""
    check_updates(updates)
    f = check_count(num_malicious, "num_malicious")
    k = updates.shape[0]
    if k < 4 * f + 3:
        raise ValueError(
            f"Bulyan needs K >= 4f + 3 clients: got K={k}, f={f} "
            f"(at least {4 * f + 3} clients are needed)."
        )
    # Distances never change, so compute them once and rescore sub-matrices.
    dist = pairwise_sq_distances(updates)
    remaining = list(range(k))
    selected: list[int] = []
    for _ in range(k - 2 * f):
        idx = torch.tensor(remaining, device=updates.device)
        sub = dist.index_select(0, idx).index_select(1, idx)
        n = len(remaining)
        neighbours = min(max(n - f - 2, 1), n - 1)
        scores = _scores_from_distances(sub, neighbours)
        best = int(torch.argmin(scores))  # first minimum on ties
        selected.append(remaining.pop(best))
    return selected


def bulyan(updates: Tensor, num_malicious: int) -> Tensor:
    """Bulyan aggregate ``[P]`` of ``updates`` ``[K, P]`` (El Mhamdi et al. 2018).

    Raises ValueError when K < 4f + 3.
    """
    f = check_count(num_malicious, "num_malicious")
    rows = torch.tensor(bulyan_select(updates, f), device=updates.device)
    selected = _take_rows(updates, rows)  # [theta, P], our own copy: sorted in place
    beta = selected.shape[0] - 2 * f
    return _mean_closest_to_median(sort_rows_(selected), beta, lambda cols: updates[:, cols].index_select(0, rows))


def _take_rows(updates: Tensor, rows: Tensor) -> Tensor:
    """``updates[rows]`` as a new contiguous tensor (numpy's copy on CPU: much faster for
    large rows than ``index_select``)."""
    if updates.device.type == "cpu" and not updates.requires_grad and updates.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.take(updates.detach().resolve_neg().resolve_conj().numpy(), rows.numpy(), axis=0))
    return updates.index_select(0, rows)


def _mean_closest_to_median_by_sorting(selected: Tensor, beta: int) -> Tensor:
    """The reference computation: stable argsort of the distances to the median."""
    centre = median(selected)
    order = torch.argsort((selected - centre).abs(), dim=0, stable=True)[:beta]
    return selected.gather(0, order).mean(dim=0)


def mean_closest_to_median(selected: Tensor, beta: int) -> Tensor:
    """Per coordinate, the mean of the ``beta`` values of ``selected`` ``[theta, P]`` closest
    to the coordinate's median ``[P]``; ties in the distance go to the earlier row.

    In sorted order the ``beta`` closest values form a window around the median, found by
    dropping the farther end ``theta - beta`` times (vectorised over coordinates, after one
    column sort). A coordinate where the two ends were ever equally far but different is
    ambiguous under that rule; those few coordinates are recomputed with the row-order tie
    rule.
    """
    return _mean_closest_to_median(sorted_rows(selected), beta, lambda cols: selected[:, cols])


def _mean_closest_to_median(ordered: Tensor, beta: int, original_columns) -> Tensor:
    theta, p = ordered.shape
    if beta >= theta:
        return ordered.mean(dim=0)
    out = torch.empty(p, dtype=ordered.dtype, device=ordered.device)
    ambiguous = torch.zeros(p, dtype=torch.bool, device=ordered.device)
    # column blocks that stay in cache while the window is found
    step = max(1, _BLOCK_ENTRIES // theta)
    for start in range(0, p, step):
        block = ordered[:, start : start + step]
        out[start : start + step], ambiguous[start : start + step] = _window_mean(block, beta)
    if bool(ambiguous.any()):
        cols = torch.nonzero(ambiguous).flatten()
        out[cols] = _mean_closest_to_median_by_sorting(original_columns(cols), beta)
    return out


_BLOCK_ENTRIES = 1 << 22


def _window_mean(ordered: Tensor, beta: int) -> tuple[Tensor, Tensor]:
    """Columns of ``ordered`` sorted: the mean of the window of ``beta`` consecutive values
    with the smallest radius around the median, and where two windows tie (ambiguous)."""
    theta, c = ordered.shape
    centre = ordered[theta // 2] if theta % 2 else 0.5 * (ordered[theta // 2 - 1] + ordered[theta // 2])
    drops = theta - beta
    # radius of the window starting at a: max(centre - x[a], x[a + beta - 1] - centre)
    radius = torch.maximum(centre - ordered[: drops + 1], ordered[beta - 1 :] - centre)
    best_r, best_a = radius.min(dim=0)  # the first minimum on ties
    ambiguous = (radius == best_r).sum(dim=0) > 1
    if drops < beta:
        # rows drops..beta-1 are in every window; low[a] = rows a..drops-1, high[a] =
        # rows beta..beta+a-1 are the parts that depend on the window's start a
        low = torch.zeros(drops + 1, c, dtype=ordered.dtype, device=ordered.device)
        high = torch.zeros(drops + 1, c, dtype=ordered.dtype, device=ordered.device)
        for a in range(drops - 1, -1, -1):
            torch.add(low[a + 1], ordered[a], out=low[a])
        for a in range(1, drops + 1):
            torch.add(high[a - 1], ordered[beta + a - 1], out=high[a])
        total = ordered[drops:beta].sum(dim=0) + low.gather(0, best_a[None])[0] + high.gather(0, best_a[None])[0]
    else:
        # window sum = prefix[a + beta] - prefix[a], prefix over the rows (prefix[0] = 0)
        prefix = torch.zeros(theta + 1, c, dtype=ordered.dtype, device=ordered.device)
        torch.cumsum(ordered, dim=0, out=prefix[1:])
        total = prefix.gather(0, (best_a + beta)[None])[0] - prefix.gather(0, best_a[None])[0]
    return total / beta, ambiguous
