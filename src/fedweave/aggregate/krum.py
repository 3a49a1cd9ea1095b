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

import torch
from torch import Tensor

from fedweave.aggregate._checks import check_count, check_updates
from fedweave.aggregate.coordinate import median
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
    return updates[chosen].mean(dim=0)


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
    selected = updates[bulyan_select(updates, f)]  # [theta, P]
    beta = selected.shape[0] - 2 * f
    centre = median(selected)
    # Per coordinate, the beta values nearest the median; stable sort for determinism.
    order = torch.argsort((selected - centre).abs(), dim=0, stable=True)[:beta]
    return selected.gather(0, order).mean(dim=0)
