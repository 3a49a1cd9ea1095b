"""Statistics that describe a partition: label histograms and heterogeneity."""

from __future__ import annotations

import numpy as np

from fedweave.core.errors import DataError
from fedweave.data._checks import as_labels, check_int


def label_histograms(labels, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Count each class per client: an int64 array ``[num_clients, num_classes]``.

    Row ``k`` is the label histogram of ``labels[parts[k]]``. A label at or
    above ``num_classes`` raises DataError.
    """
    labels = as_labels(labels)
    num_classes = check_int(num_classes, "num_classes", low=1)
    num_clients = len(parts)
    if num_clients == 0:
        return np.zeros((0, num_classes), dtype=np.int64)
    sizes = np.array([np.size(p) for p in parts], dtype=np.int64)
    idx = np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in parts])
    owner = np.repeat(np.arange(num_clients), sizes)
    lab = labels[idx]
    if lab.size and lab.max() >= num_classes:
        raise DataError(
            f"Found label {int(lab.max())}, but num_classes is {num_classes}; labels "
            f"must lie in 0..{num_classes - 1}."
        )
    # One bincount over a flattened (client, class) key instead of a loop.
    flat = np.bincount(owner * num_classes + lab, minlength=num_clients * num_classes)
    return flat.reshape(num_clients, num_classes).astype(np.int64)


def heterogeneity(hists) -> float:
    """Mean total-variation distance between client and global label distributions.

    For client ``k`` with label distribution ``p_k`` (its histogram divided by
    its size) and the global distribution ``g`` (the pooled histogram of all
    clients, normalized), the distance is ``TV(p_k, g) = 0.5 * sum_c |p_k[c] -
    g[c]|``, which lies in [0, 1]. The result is the unweighted mean over the
    clients that have at least one example.

    0 means every client has exactly the global label mix (iid); values near 1
    mean clients hold (nearly) disjoint classes. With C equally frequent
    classes and one class per client the value is ``1 - 1/C``.
    """
    h = np.asarray(hists, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"hists must be 2-D [clients, classes]; got shape {h.shape}")
    sizes = h.sum(axis=1)
    h = h[sizes > 0]
    if h.shape[0] == 0:
        return 0.0
    p = h / h.sum(axis=1, keepdims=True)
    g = h.sum(axis=0) / h.sum()
    return float(np.mean(0.5 * np.abs(p - g).sum(axis=1)))


def partition_summary(labels, parts: list[np.ndarray], num_classes: int) -> dict:
    """Describe a partition with plain Python values (ready for printing or JSON).

    Keys: ``num_clients``, ``num_examples``, ``num_classes``, ``sizes``
    (``min``/``mean``/``max``/``std`` of client sizes), ``heterogeneity`` (see
    :func:`heterogeneity`), ``classes_per_client`` (``min``/``mean``/``max``
    number of classes present on a client), ``client_sizes`` (list of ints)
    and ``histograms`` (per-client list of per-class counts).
    """
    hists = label_histograms(labels, parts, num_classes)
    sizes = hists.sum(axis=1)
    present = (hists > 0).sum(axis=1)

    def describe(values: np.ndarray, with_std: bool) -> dict:
        if values.size == 0:
            out = {"min": 0, "mean": 0.0, "max": 0}
        else:
            out = {
                "min": int(values.min()),
                "mean": float(values.mean()),
                "max": int(values.max()),
            }
        if with_std:
            out["std"] = float(values.std()) if values.size else 0.0
        return out

    return {
        "num_clients": len(parts),
        "num_examples": int(sizes.sum()),
        "num_classes": int(num_classes),
        "sizes": describe(sizes, True),
        "heterogeneity": heterogeneity(hists) if len(parts) else 0.0,
        "classes_per_client": describe(present, False),
        "client_sizes": [int(s) for s in sizes],
        "histograms": hists.tolist(),
    }
