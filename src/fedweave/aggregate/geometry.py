"""Geometric helpers on stacked client updates ``U`` ``[K, P]``.

* Pairwise squared distances through the Gram matrix ``G = U U^T``:
  ``||u_i - u_j||^2 = ||u_i||^2 + ||u_j||^2 - 2 <u_i, u_j>``, one matrix product.
* Norm clipping ``u_k <- u_k * min(1, C / ||u_k||)``, the per-client bound used by
  DP-FedAvg (McMahan et al. 2018, *Learning Differentially Private Recurrent Language
  Models*, ICLR) and by norm-bounding defences (Sun et al. 2019, *Can You Really Backdoor
  Federated Learning?*).
* Cosine similarity ``cos(u_k, b) = <u_k, b> / (||u_k|| ||b||)`` of each row with a vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedweave.aggregate._checks import check_updates


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """Squared Euclidean distances ``[K, K]`` between the rows of ``updates`` ``[K, P]``.

    Uses the Gram matrix (one matmul); the result is exactly symmetric, tiny negative
    values from rounding are clamped to zero and the diagonal is exactly zero.
    """
    check_updates(updates)
    # Distances do not change under translation. Shifting by one of the rows keeps the
    # norms within the set's diameter, which avoids catastrophic cancellation in
    # ||a||^2 + ||b||^2 - 2ab when the updates share a large common component. (A row
    # rather than the mean: the shift is then exact for exactly representable data, so
    # exact ties in distances stay ties.) The shifted Gram matrix is accumulated over
    # column blocks of ~4M entries, in float64 for float inputs: each block stays in cache,
    # and no [K, P] temporary is made. The squared norms are its diagonal.
    k, p = updates.shape
    acc = torch.float64 if updates.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else updates.dtype
    gram = torch.zeros(k, k, dtype=acc, device=updates.device)
    ref = updates[0]
    step = min(p, max(1, _BLOCK_ENTRIES // k))
    buf = torch.empty(k, step, dtype=updates.dtype, device=updates.device)  # reused: no page faults per block
    for start in range(0, p, step):
        width = min(step, p - start)
        block = buf[:, :width]
        torch.sub(updates[:, start : start + width], ref[start : start + width], out=block)
        gram += (block @ block.T).to(acc)
    sq_norms = gram.diagonal()
    dist = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    # Averaging with the transpose makes d(i, j) == d(j, i) exactly, so mutual nearest
    # neighbours tie exactly in Krum.
    dist = (0.5 * (dist + dist.T)).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    return dist.to(updates.dtype)


_BLOCK_ENTRIES = 1 << 22


def clip_by_norm(updates: Tensor, max_norm: float) -> Tensor:
    """Scale each row of ``updates`` ``[K, P]`` so that its L2 norm is at most ``max_norm``.

    Rows already within the bound, including all-zero rows, are returned unchanged.
    Returns a new tensor; the input is not modified.
    """
    check_updates(updates)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}.")
    norms = torch.linalg.vector_norm(updates, dim=1, keepdim=True)
    # clamp_min avoids 0/0 on zero rows; their factor then clamps to 1.
    factor = (max_norm / norms.clamp_min(torch.finfo(updates.dtype).tiny)).clamp(max=1.0)
    return updates * factor


def cosine_similarity_rows(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity ``[K]`` of each row of ``a`` ``[K, P]`` with the vector ``b`` ``[P]``.

    A zero row or a zero ``b`` gives similarity 0 (the denominator is clamped to ``eps``).
    """
    check_updates(a, "a")
    if b.dim() != 1 or b.shape[0] != a.shape[1]:
        raise ValueError(f"b must have shape [{a.shape[1]}], got {tuple(b.shape)}.")
    b = b.to(dtype=a.dtype)
    dots = a @ b
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b)
    return dots / norms.clamp_min(eps)
