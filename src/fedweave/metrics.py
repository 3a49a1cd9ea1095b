"""Evaluation records and run summaries: fairness figures, best/final values, time to target."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fairness(scores: np.ndarray, higher_is_better: bool = True) -> dict[str, float]:
    """Per-client figures of the primary metric (named ``client_acc_*`` whatever the metric).

    ``client_acc_worst10`` is the mean of the worst 10% of clients (at least one client;
    the highest values when lower is better, e.g. perplexity);
    ``jain_index`` is Jain's fairness index (Σx)² / (N Σx²), 1 when all clients are equal.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return {}
    k = max(1, math.ceil(0.1 * x.size))
    ordered = np.sort(x)
    worst = ordered[:k] if higher_is_better else ordered[-k:]
    sq = float((x**2).sum())
    return {
        "client_acc_mean": float(x.mean()),
        "client_acc_std": float(x.std()),
        "client_acc_worst10": float(worst.mean()),
        "jain_index": float(x.sum() ** 2 / (x.size * sq)) if sq > 0 else 1.0,
    }


def summarize(
    history: list[dict[str, Any]],
    *,
    metric_name: str,
    higher_is_better: bool,
    final_window: int,
    target: float | None,
) -> dict[str, Any]:
    """Final (mean of the last ``final_window`` evaluations), best and time-to-target."""
    out: dict[str, Any] = {"metric_name": metric_name, "final_metric": None, "best_metric": None,
                           "final_loss": None, "time_to_target_s": None}
    values = [r[metric_name] for r in history if r.get(metric_name) is not None]
    if values:
        window = values[-final_window:]
        out["final_metric"] = float(np.mean(window))
        out["best_metric"] = float(max(values) if higher_is_better else min(values))
        losses = [r["loss"] for r in history[-final_window:] if r.get("loss") is not None]
        out["final_loss"] = float(np.mean(losses)) if losses else None
    if target is not None:
        for r in history:
            v = r.get(metric_name)
            if v is not None and (v >= target if higher_is_better else v <= target):
                out["time_to_target_s"] = r["virtual_time_s"]
                break
    if history:
        for key in ("client_acc_mean", "client_acc_std", "client_acc_worst10", "jain_index",
                    "personalized_acc_mean", "personalized_acc_std", "personalized_acc_worst10"):
            if key in history[-1]:
                out[key] = history[-1][key]
    return out


def chance_accuracy(test_labels: np.ndarray) -> float:
    """The accuracy of the best constant guess: the share of the most common test class."""
    counts = np.bincount(np.asarray(test_labels, dtype=np.int64))
    return float(counts.max() / counts.sum())


def degenerate_reason(history: list[dict[str, Any]], *, num_classes: int, test_labels: np.ndarray) -> str | None:
    """Why a finished classification run is degenerate (trained to chance with an exploded
    loss), or None. The rule, applied to the last evaluation record:

    * **no better than chance**: accuracy <= p + 2·sqrt(p(1-p)/n), where p is the share of
      the most common test class (what a constant guess scores) and n the number of test
      examples — within two standard errors of a chance-level classifier; **and**
    * **training exploded**: the clients' mean training loss is missing (every update of
      the interval was non-finite) or above 10·ln C, ten times the cross-entropy of a
      uniform guess over the C classes.

    Either alone is not enough: a model that learned little keeps a loss near ln C, and
    a huge learning rate on a convex model can give a huge loss at good accuracy.
    """
    if not history or num_classes < 2 or len(test_labels) == 0 or history[-1].get("accuracy") is None:
        return None
    last = history[-1]
    p, n = chance_accuracy(test_labels), len(test_labels)
    bar = p + 2 * math.sqrt(p * (1 - p) / n)
    accuracy = float(last["accuracy"])
    loss_bar = 10 * math.log(num_classes)
    train_loss = last.get("train_loss")
    exploded = train_loss is None or not math.isfinite(train_loss) or train_loss > loss_bar
    if accuracy > bar or not exploded:
        return None
    loss_text = "missing (every update non-finite)" if train_loss is None or not math.isfinite(train_loss) \
        else f"{train_loss:.3g} > 10·ln {num_classes} = {loss_bar:.3g}"
    return (f"degenerate run: final accuracy {accuracy:.4f} is no better than chance ({p:.4f} by always guessing the "
            f"most common class; bar {bar:.4f}) and the training loss exploded ({loss_text}); lower client.lr or "
            "add client.grad_clip")
