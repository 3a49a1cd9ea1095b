"""The UAM study of docs/results/uam.md: staleness-aware AFL against synchronous FedAvg,
FedAsync with a constant weight and FedBuff, with uploads decided by the SIR channel.

Workload (examples/uam_turbulence.yaml): 12 aircraft, one per corridor (burgers1d:12:64:32,
natural split, non-IID in turbulence intensity), a 1-D FNO (width 16, 8 modes, 3 Fourier
layers), Adam 3e-3, one local epoch of batch 8; ``uam_wireless`` channel (λ = 1 GBS/km²,
h = 0.3 km, α = 3, θ = 0 dB, activity 0.5, retry 2 s, 1 Mbit/s uplink), a budget of
200 virtual seconds and the test error every 20 virtual seconds.

Methods: ``afl_staleness`` (async, β = (0.5 + e^(−Δt/T))/N, T auto); ``fedasync`` with
staleness ``constant`` and α = 0.1 (≈ 1.2/N, the middle of AFL's range [0.5/N, 1.5/N]:
the staleness-free AFL); ``fedbuff`` (buffered, K = 4); ``fedavg`` in sync rounds over
all 12 aircraft (each round waits until every aircraft's upload got through).
Sweeps (AFL and sync FedAvg): GBS density λ ∈ {0.3, 1, 4} at θ = 0 dB and SIR threshold
θ ∈ {−5, 0, 5} dB at λ = 1. Seeds 0, 1, 2 (``seed``; the data and GBS layout follow
``data.seed`` = seed as well, so each seed is a new city).

Outputs (docs/results/uam/): runs.json (every run's history), connectivity.png (the
validation figure: analytic P_c against Monte Carlo), error_vs_time.png, and the tables
printed for docs/results/uam.md.

Usage::

    PYTHONPATH=src .venv/bin/python bench/uam.py               # everything (~15 min on 2 free cores)
    PYTHONPATH=src .venv/bin/python bench/uam.py --report      # tables and plots from runs.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from fedweave.experiment import run
from fedweave.rng import numpy_rng
from fedweave.wireless.connectivity import ChannelParams, connectivity_probability, monte_carlo_connectivity

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "uam"
BASE = ROOT / "examples" / "uam_turbulence.yaml"
SEEDS = [0, 1, 2]
BUDGET_S = 200.0
SWEEP_SEEDS = [0, 1, 2]
METHODS = {
    "afl_staleness": ["method.name=afl_staleness", "schedule.mode=async"],
    "fedasync_const": ["method.name=fedasync", "method.staleness=constant", "method.alpha=0.1", "schedule.mode=async"],
    "fedbuff": ["method.name=fedbuff", "schedule.mode=buffered", "schedule.buffer_size=4"],
    "fedavg_sync": ["method.name=fedavg", "schedule.mode=sync"],
}
SETTINGS = {  # name -> (gbs_density, sir_threshold_db)
    "default": (1.0, 0.0),
    "density0.3": (0.3, 0.0),
    "density4": (4.0, 0.0),
    "theta-5": (1.0, -5.0),
    "theta5": (1.0, 5.0),
}


def one_run(method: str, setting: str, seed: int, workdir: Path) -> dict:
    density, theta = SETTINGS[setting]
    overrides = METHODS[method] + [
        f"seed={seed}", f"data.seed={seed}", f"schedule.max_time_s={BUDGET_S}",
        f"system.uam.gbs_density={density}", f"system.uam.sir_threshold_db={theta}",
    ]
    t0 = time.perf_counter()
    result = run(BASE, out=workdir / f"{method}-{setting}-{seed}", overrides=overrides)
    hist = [{"t": r["virtual_time_s"], "rel_l2": r["rel_l2"], "rmse": r["rmse"],
             "staleness_mean": r.get("staleness_mean")} for r in result.history]
    return {"method": method, "setting": setting, "seed": seed, "history": hist,
            "client_updates": result.summary["client_updates"], "wall_s": time.perf_counter() - t0}


def run_all() -> list[dict]:
    jobs = [(m, "default", s) for m in METHODS for s in SEEDS]
    jobs += [(m, st, s) for st in SETTINGS if st != "default" for m in ("afl_staleness", "fedavg_sync") for s in SWEEP_SEEDS]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (m, st, s) in enumerate(jobs):
            runs.append(one_run(m, st, s, Path(tmp)))
            print(f"[{i + 1}/{len(jobs)}] {m} {st} seed {s}: rel_l2 {runs[-1]['history'][-1]['rel_l2']:.4f} "
                  f"({runs[-1]['wall_s']:.0f} s)", flush=True)
    return runs


def error_at(run_: dict, t: float) -> float:
    """Test rel_l2 of the last evaluation at or before virtual time t (nan if none)."""
    values = [h["rel_l2"] for h in run_["history"] if h["t"] <= t + 1e-9]
    return values[-1] if values else float("nan")


def time_to(run_: dict, target: float) -> float:
    """First virtual time at which the test rel_l2 is ≤ target (inf: never within the budget)."""
    return next((h["t"] for h in run_["history"] if h["rel_l2"] <= target), math.inf)


def mean_std(values, digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    if np.isinf(v).any():
        return f"{int(np.isinf(v).sum())}/{v.size} not within {BUDGET_S:.0f} s"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else f"{v.mean():.{digits}f}"


TARGET = 0.3


def staleness(rs: list[dict]) -> str:
    values = [r["history"][-1]["staleness_mean"] for r in rs]
    return "—" if any(v is None for v in values) else f"{np.mean(values):.1f}"


def report(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channel = {}
    for name, (density, theta) in SETTINGS.items():
        channel[name] = connectivity_probability(ChannelParams(gbs_density=density, sir_threshold_db=theta))
    print(f"| setting | P_c (analytic) | method | rel_l2 @100 s | rel_l2 @{BUDGET_S:.0f} s | time to rel_l2 ≤ {TARGET} (s) "
          "| updates merged | mean staleness |")
    print("|---|---|---|---|---|---|---|---|")
    for setting in SETTINGS:
        for method in METHODS:
            rs = [r for r in runs if r["method"] == method and r["setting"] == setting]
            if not rs:
                continue
            print(f"| {setting} | {channel[setting]:.3f} | {method} | {mean_std([error_at(r, 100) for r in rs])} | "
                  f"{mean_std([error_at(r, BUDGET_S) for r in rs])} | {mean_std([time_to(r, TARGET) for r in rs], 0)} | "
                  f"{np.mean([r['client_updates'] for r in rs]):.0f} | {staleness(rs)} |")
    # error against virtual time, default setting
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method and r["setting"] == "default"]
        grid = sorted({h["t"] for r in rs for h in r["history"]})
        curves = np.array([[error_at(r, t) for t in grid] for r in rs])
        mean = np.nanmean(curves, axis=0)
        ax.plot(grid, mean, label=method)
        ax.fill_between(grid, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), alpha=0.2)
    ax.set(xlabel="virtual time (s)", ylabel="test relative L2 error", yscale="log",
           title="FNO on Burgers turbulence over uam_wireless: mean, min–max of 3 seeds")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "error_vs_time.png", dpi=110)
    plt.close(fig)
    # design guideline: final error against the connectivity probability of each setting
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in [("afl_staleness", "o"), ("fedavg_sync", "s")]:
        xs, ys, es = [], [], []
        for setting in SETTINGS:
            rs = [r for r in runs if r["method"] == method and r["setting"] == setting]
            finals = [error_at(r, BUDGET_S) for r in rs]
            xs.append(channel[setting]), ys.append(np.mean(finals)), es.append(np.std(finals))
        ax.errorbar(xs, ys, yerr=es, fmt=marker, label=method, capsize=3)
        for x, y, name in zip(xs, ys, SETTINGS):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel="connectivity probability P(SIR > θ) of the setting", ylabel=f"test rel. L2 error at {BUDGET_S:.0f} s",
           title="Design guideline: error after the budget vs connectivity (3 seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "error_vs_connectivity.png", dpi=110)
    plt.close(fig)


def connectivity_figure() -> list[tuple]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thetas = np.arange(-10, 11, 2.5)
    rows = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for density, color in [(0.3, "C0"), (1.0, "C1"), (4.0, "C2")]:
        fine = np.linspace(-10, 10, 81)
        ax.plot(fine, [connectivity_probability(ChannelParams(gbs_density=density, sir_threshold_db=t)) for t in fine],
                color=color, label=f"analytic, λ = {density} /km²")
        for j, t in enumerate(thetas):
            p = ChannelParams(gbs_density=density, sir_threshold_db=float(t))
            mc, se = monte_carlo_connectivity(p, 20000, numpy_rng(0, "uam-figure", int(density * 10), j))
            rows.append((density, float(t), connectivity_probability(p), mc, se))
            ax.errorbar(t, mc, yerr=2 * se, fmt="o", color=color, ms=4)
    ax.set(xlabel="SIR threshold θ (dB)", ylabel="connectivity probability P(SIR > θ)",
           title="UAM aircraft-to-GBS connectivity: analytic (lines) vs Monte Carlo (dots, ±2σ)")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "connectivity.png", dpi=110)
    plt.close(fig)
    worst = max(abs(a - m) / s for _, _, a, m, s in rows)
    print(f"connectivity: {len(rows)} points, largest |analytic − MC| = {worst:.2f} standard errors")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="only tables and plots from runs.json")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    connectivity_figure()
    if not args.report:
        runs = run_all()
        (OUT / "runs.json").write_text(json.dumps(runs))
    report(json.loads((OUT / "runs.json").read_text()))


if __name__ == "__main__":
    main()
