"""Fairness figures and run summaries (fedweave.metrics), and per-client evaluation in a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedweave
from fedweave import build_experiment, load_config
from fedweave.metrics import fairness, summarize
from fedweave.params import FlatModel


def test_fairness_hand_values():
    x = [0.9, 0.5, 0.7, 0.3, 1.0, 0.6, 0.8, 0.4, 0.2, 0.95, 0.85]  # 11 clients → worst ceil(1.1) = 2
    f = fairness(np.array(x))
    mean = sum(x) / 11
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / 11)  # population std
    assert f["client_acc_mean"] == pytest.approx(mean, rel=1e-12)
    assert f["client_acc_std"] == pytest.approx(std, rel=1e-12)
    assert f["client_acc_worst10"] == pytest.approx((0.2 + 0.3) / 2, rel=1e-12)
    assert f["jain_index"] == pytest.approx(sum(x) ** 2 / (11 * sum(v * v for v in x)), rel=1e-12)


@pytest.mark.parametrize("n, k", [(1, 1), (5, 1), (10, 1), (19, 2), (20, 2), (21, 3)])
def test_worst10_uses_ceil(n, k):
    x = np.arange(n, dtype=float)[::-1] + 1.0  # values n..1, worst are 1..k
    assert fairness(x)["client_acc_worst10"] == pytest.approx(sum(range(1, k + 1)) / k)


def test_jain_index_extremes():
    assert fairness(np.full(7, 0.42))["jain_index"] == pytest.approx(1.0)
    one_hot = np.zeros(8)
    one_hot[3] = 0.9
    assert fairness(one_hot)["jain_index"] == pytest.approx(1 / 8)
    assert fairness(np.zeros(4))["jain_index"] == 1.0
    assert fairness(np.array([])) == {}


def hist(*accs, times=None, losses=None):
    times = times or [10.0 * (i + 1) for i in range(len(accs))]
    losses = losses or [1.0 / (i + 1) for i in range(len(accs))]
    return [{"round": i + 1, "accuracy": a, "loss": l, "virtual_time_s": t} for i, (a, l, t) in
            enumerate(zip(accs, losses, times))]


def test_summarize_best_final_and_target():
    h = hist(0.2, 0.6, 0.5, 0.7, 0.65)
    s = summarize(h, metric_name="accuracy", higher_is_better=True, final_window=1, target=0.6)
    assert s["final_metric"] == 0.65
    assert s["best_metric"] == 0.7
    assert s["final_loss"] == pytest.approx(1 / 5)
    assert s["time_to_target_s"] == 20.0  # the first record with accuracy ≥ 0.6
    s = summarize(h, metric_name="accuracy", higher_is_better=True, final_window=3, target=0.71)
    assert s["final_metric"] == pytest.approx((0.5 + 0.7 + 0.65) / 3)
    assert s["final_loss"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)
    assert s["time_to_target_s"] is None


def test_summarize_lower_is_better():
    h = [{"round": i, "psnr": v, "loss": v, "virtual_time_s": float(i)} for i, v in enumerate([5.0, 3.0, 4.0, 2.0])]
    s = summarize(h, metric_name="psnr", higher_is_better=False, final_window=2, target=3.0)
    assert s["best_metric"] == 2.0
    assert s["final_metric"] == 3.0
    assert s["time_to_target_s"] == 1.0


def test_summarize_empty_and_window_larger_than_history():
    s = summarize([], metric_name="accuracy", higher_is_better=True, final_window=3, target=0.5)
    assert s["final_metric"] is None and s["best_metric"] is None and s["time_to_target_s"] is None
    s = summarize(hist(0.3, 0.5), metric_name="accuracy", higher_is_better=True, final_window=10, target=None)
    assert s["final_metric"] == pytest.approx(0.4)


def test_summarize_copies_last_fairness_figures():
    h = hist(0.3, 0.5)
    h[-1].update({"client_acc_mean": 0.4, "client_acc_std": 0.1, "client_acc_worst10": 0.2, "jain_index": 0.9})
    s = summarize(h, metric_name="accuracy", higher_is_better=True, final_window=1, target=None)
    assert s["client_acc_mean"] == 0.4 and s["jain_index"] == 0.9


def test_per_client_figures_in_a_run_match_hand_recomputation(tiny, tmp_path):
    cfg = tiny({"data": {"partition": {"num_clients": 8}, "client_val_fraction": 0.2},
                "schedule": {"rounds": 3, "clients_per_round": 4}, "eval": {"per_client": True}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    for rec in res.history:
        for key in ("client_acc_mean", "client_acc_std", "client_acc_worst10", "jain_index"):
            assert key in rec
    exp = build_experiment(load_config(cfg))
    fm = FlatModel(exp.model_factory())
    with torch.no_grad():
        fm.params.copy_(res.params)
    fm.module.eval()
    accs = []
    with torch.no_grad():
        for idx in exp.data.client_val:
            if len(idx) == 0:
                continue
            pred = fm.module(exp.data.x[idx]).argmax(1)
            accs.append((pred == exp.data.y[idx]).double().mean().item())
    assert len(accs) >= 6
    accs = np.array(accs)
    last = res.history[-1]
    assert last["client_acc_mean"] == pytest.approx(accs.mean(), abs=1e-12)
    assert last["client_acc_std"] == pytest.approx(accs.std(), abs=1e-12)
    k = math.ceil(0.1 * len(accs))
    assert last["client_acc_worst10"] == pytest.approx(np.sort(accs)[:k].mean(), abs=1e-12)
    assert last["jain_index"] == pytest.approx(accs.sum() ** 2 / (len(accs) * (accs**2).sum()), abs=1e-12)
    assert res.summary["client_acc_mean"] == last["client_acc_mean"]


def test_no_per_client_figures_by_default(tiny, tmp_path):
    res = fedweave.run(tiny(), out=tmp_path / "r")
    assert "client_acc_mean" not in res.history[-1]
    assert "client_acc_mean" not in res.summary
