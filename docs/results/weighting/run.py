"""Reproduce the numbers of docs/results/weighting.md.

    .venv/bin/python docs/results/weighting/run.py                 # everything
    .venv/bin/python docs/results/weighting/run.py --parts niid2,loo --jobs 2
    .venv/bin/python docs/results/weighting/run.py --parts main_ldawa,ablation_ldawa --merge  # rerun rows
    .venv/bin/python docs/results/weighting/run.py --tables-only  # tables.md from results.csv (+ new parts in runs/)

Runs go to ``runs/weighting/`` (``fedweave sweep`` skips finished runs, so an interrupted
script resumes; it refuses to mix runs made with a different config — after a config
change, delete ``runs/weighting/``). The aggregated figures are written to
``docs/results/weighting/results.csv`` (one row per run), ``loo.json`` (leave-one-out
contributions) and ``tables.md`` (the tables of the page).

Parts (in this order by default)
  main         FedAvg, FedDisco, FedLAW, FedCE, L-DAWA and q-FFL (q = 0.1 and 1) on digits,
               mnist5k and mnist1d at Dirichlet 0.1 and 0.5, 10 clients, all in every
               round, 30 rounds; 3 replicates, replicate k using seed k and data.seed k
               (a different partition and initialisation each time). L-DAWA here groups a
               module's weight and bias (method.granularity=module, row ``ldawa[module]``).
               (``main_ldawa`` runs the L-DAWA part alone.)
  ablation     FedAvg with uniform weights and L-DAWA (granularity=module) with size
               weights, same grid. (``ablation_ldawa`` runs the L-DAWA half alone.)
  ldawa_variants  L-DAWA with per-tensor cosines (the official unit, the default),
               un-normalised and normalised (method.normalize), same grid.
  niid2        FedDisco's NIID-2 on mnist5k (5 two-class clients + 1 IID client), FedAvg and
               FedProx, each with size and disco weights; 3 training seeds.
  niid2_e10    NIID-2 with 10 local epochs (FedDisco's script), FedAvg with size / disco weights.
  qffl_long    digits, Dirichlet 0.1, 120 rounds: FedAvg (size, uniform) and q-FFL (q = 0.1, 1).
  restoration  x2 super-resolution of mnist5k: FedAvg, FedVSR and its two halves (the
               loss-aware weighting alone, the high-frequency loss alone); 3 replicates.
  loo          FedCE's contribution estimates vs leave-one-out contributions: mnist5k
               Dirichlet 0.5 (replicate 0; needs ``main``), and digits with 4 IID clients
               one of which has shuffled labels.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))

import fedweave  # noqa: E402
from fedweave.sweep import run_sweep  # noqa: E402

METHODS = "fedavg,feddisco,fedlaw,fedce"  # L-DAWA and q-FFL have their own sweeps (below)
REPS = (0, 1, 2)


def _sweep(config: Path, grid: list[str], out: Path, jobs: int, seeds=(0,), overrides=None) -> None:
    def progress(p):
        if p.last:
            print(f"  [{p.done}/{p.total}] {p.last}", flush=True)

    run_sweep(config, grid=grid, seeds=list(seeds), out=out, overrides=overrides or [], jobs=jobs, progress=progress)


def part_main(out: Path, jobs: int) -> None:
    for ds in ("digits", "mnist5k", "mnist1d"):
        for k in REPS:
            base = [f"data.seed={k}"]
            print(f"main: {ds} replicate {k}", flush=True)
            _sweep(HERE / f"{ds}.yaml", [f"method.name={METHODS}", "data.partition.alpha=0.1,0.5"],
                   out / "main" / ds / f"rep{k}", jobs, seeds=(k,), overrides=base)
            _sweep(HERE / f"{ds}.yaml", ["method.q=0.1,1", "data.partition.alpha=0.1,0.5"],
                   out / "main" / f"{ds}-qffl" / f"rep{k}", jobs, seeds=(k,), overrides=base + ["method.name=qffl"])
    part_main_ldawa(out, jobs)


def part_ldawa_variants(out: Path, jobs: int) -> None:
    """L-DAWA with the official per-tensor cosines, un-normalised (the default) and normalised
    (``method.normalize=true``: each unit's coefficients divided by their sum)."""
    for ds in ("digits", "mnist5k", "mnist1d"):
        for k in REPS:
            print(f"L-DAWA variants: {ds} replicate {k}", flush=True)
            _sweep(HERE / f"{ds}.yaml", ["data.partition.alpha=0.1,0.5", "method.normalize=false,true"],
                   out / "ldawa-variants" / ds / f"rep{k}", jobs, seeds=(k,),
                   overrides=[f"data.seed={k}", "method.name=ldawa", "method.granularity=tensor"])


def part_main_ldawa(out: Path, jobs: int) -> None:
    """L-DAWA with a module's weight and bias as one unit (``method.granularity=module``),
    un-normalised, uniform weights: the ``ldawa[module]`` rows."""
    for ds in ("digits", "mnist5k", "mnist1d"):
        for k in REPS:
            print(f"main (L-DAWA, module units): {ds} replicate {k}", flush=True)
            _sweep(HERE / f"{ds}.yaml", ["data.partition.alpha=0.1,0.5"], out / "main" / f"{ds}-ldawa-module" / f"rep{k}",
                   jobs, seeds=(k,), overrides=[f"data.seed={k}", "method.name=ldawa", "method.granularity=module"])


def make_niid2(path: Path, seed: int = 0) -> None:
    """FedDisco's NIID-2 (utils.py of the official code, re-derived): per class, 6 equal shards;
    client i < 5 gets 5 shards of classes 2i and 2i+1, client 5 one shard of every class."""
    from fedweave.data.sources import load_source
    from fedweave.data.splits import stratified_holdout

    src = load_source("mnist5k")
    x, y = src.x_train.numpy(), src.y_train.numpy()
    train, test = stratified_holdout(y, 0.2, 12345)
    rng = np.random.default_rng(seed)
    owner = np.full(len(train), -1, dtype=np.int64)
    ytr = y[train]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(ytr == c))
        shards = np.array_split(idx, 6)
        for s in shards[:5]:
            owner[s] = c // 2
        owner[shards[5]] = 5
    assert (owner >= 0).all()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x[train], y=ytr, client_id=owner, x_test=x[test], y_test=y[test])


def part_niid2(out: Path, jobs: int) -> None:
    npz = ROOT / "runs" / "weighting" / "niid2_mnist5k.npz"
    if not npz.exists():
        make_niid2(npz)
    print("niid2", flush=True)
    _sweep(HERE / "niid2.yaml", ["method.name=fedavg,fedprox", "method.weighting=size,disco"], out / "niid2", jobs,
           seeds=REPS, overrides=["client.mu=0.1"])  # mu of the official NIID-2 script


ABLATIONS = {  # directory name -> overrides
    "fedavg-uniform": ["method.name=fedavg", "method.weighting=uniform"],
    "ldawa-module-size": ["method.name=ldawa", "method.granularity=module", "method.weighting=size"],
}


def part_ablation(out: Path, jobs: int, which=tuple(ABLATIONS)) -> None:
    """FedAvg with uniform weights (the baseline of L-DAWA's and q-FFL's 1/K) and L-DAWA
    (module units, as in ``main``) with size weights: rows ``fedavg+uniform``, ``ldawa[module]+size``."""
    for ds in ("digits", "mnist5k", "mnist1d"):
        for k in REPS:
            print(f"ablation ({', '.join(which)}): {ds} replicate {k}", flush=True)
            for name in which:
                _sweep(HERE / f"{ds}.yaml", ["data.partition.alpha=0.1,0.5"], out / "ablation" / f"{ds}-{name}" / f"rep{k}",
                       jobs, seeds=(k,), overrides=[f"data.seed={k}"] + ABLATIONS[name])


def part_ablation_ldawa(out: Path, jobs: int) -> None:
    part_ablation(out, jobs, which=("ldawa-module-size",))


def part_niid2_e10(out: Path, jobs: int) -> None:
    """NIID-2 with 10 local epochs, as FedDisco's own script (more client drift)."""
    npz = ROOT / "runs" / "weighting" / "niid2_mnist5k.npz"
    if not npz.exists():
        make_niid2(npz)
    print("niid2, 10 local epochs", flush=True)
    _sweep(HERE / "niid2.yaml", ["method.weighting=size,disco"], out / "niid2-e10", jobs, seeds=REPS,
           overrides=["method.name=fedavg", "client.epochs=10"])


def part_qffl_long(out: Path, jobs: int) -> None:
    """q-FFL given time to converge: digits, Dirichlet 0.1, 120 rounds instead of 30."""
    for k in REPS:
        print(f"q-FFL, 120 rounds: replicate {k}", flush=True)
        base = [f"data.seed={k}", "data.partition.alpha=0.1", "schedule.rounds=120"]
        _sweep(HERE / "digits.yaml", ["method.weighting=size,uniform"], out / "qffl-long" / "fedavg" / f"rep{k}", jobs,
               seeds=(k,), overrides=base + ["method.name=fedavg"])
        _sweep(HERE / "digits.yaml", ["method.q=0.1,1"], out / "qffl-long" / "qffl" / f"rep{k}", jobs,
               seeds=(k,), overrides=base + ["method.name=qffl"])


def part_restoration(out: Path, jobs: int) -> None:
    for k in REPS:
        print(f"restoration: replicate {k}", flush=True)
        _sweep(HERE / "restoration.yaml", ["method.name=fedavg,fedvsr", "method.weighting=size,loss"],
               out / "restoration" / f"rep{k}", jobs, seeds=(k,), overrides=[f"data.seed={k}"])


def _fedce_estimates(run_dir: Path) -> tuple[list[float], list[float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]["fedce_contribution"]
    mean = np.mean([r["fedce_contribution"] for r in records], axis=0).tolist()
    return final, mean


def _fedce_run(cfg, data, path: Path):
    from fedweave.experiment import _execute, build_experiment
    from fedweave.rundir import RunDirectory

    exp = build_experiment(cfg, data=data)
    rd = RunDirectory(path)
    cfg.output.dir = str(rd.path)
    rd.create(cfg.to_yaml())
    return _execute(exp, rd, None, None)


def part_loo(out: Path, jobs: int) -> None:
    import torch

    from fedweave.contributions import leave_one_out
    from fedweave.data.federated import build_federated
    from fedweave.methods.fedce import pearson

    results = {}
    # 1. mnist5k, Dirichlet 0.5, replicate 0: FedCE's estimates from its run in `main`
    raw = yaml.safe_load((HERE / "mnist5k.yaml").read_text())
    over = ["data.seed=0", "seed=0", "data.partition.alpha=0.5"]
    cfg = fedweave.load_config(raw, over + ["method.name=fedce"])
    data = build_federated(cfg.data)
    ce_dir = out / "main" / "mnist5k" / "rep0" / "method.name=fedce__data.partition.alpha=0.5" / "seed0"
    final, mean = _fedce_estimates(ce_dir)
    print("loo: mnist5k (11 FedCE runs, 11 FedAvg runs)", flush=True)
    loo_ce = leave_one_out(raw, over + ["method.name=fedce"], data=data, out=out / "loo" / "mnist5k-fedce")
    loo_avg = leave_one_out(raw, over + ["method.name=fedavg"], data=data, out=out / "loo" / "mnist5k-fedavg")
    results["mnist5k_dir0.5"] = {
        "sizes": [int(v) for v in data.client_sizes()], "fedce_final": final, "fedce_mean": mean,
        "loo_fedce": loo_ce, "loo_fedavg": loo_avg,
        "pearson_final_vs_loo_fedce": pearson(final, loo_ce["contribution"]),
        "pearson_mean_vs_loo_fedce": pearson(mean, loo_ce["contribution"]),
        "pearson_final_vs_loo_fedavg": pearson(final, loo_avg["contribution"]),
        "pearson_mean_vs_loo_fedavg": pearson(mean, loo_avg["contribution"]),
    }
    # 2. digits, 4 IID clients, client 0's labels shuffled (training and validation)
    noisy = {"name": "noisy", "data": {"dataset": "digits", "partition": {"kind": "iid", "num_clients": 4}},
             "model": {"name": "mlp", "hidden": [64]}, "client": {"epochs": 2, "lr": 0.1},
             "schedule": {"rounds": 30, "clients_per_round": 4}, "eval": {"per_client": True, "final_window": 3}}
    rows = []
    for seed in REPS:
        cfg = fedweave.load_config(noisy, [f"seed={seed}", "method.name=fedce"])
        data = build_federated(cfg.data)
        y = data.y.clone()
        idx = torch.cat([data.client_train[0], data.client_val[0]])
        y[idx] = y[idx][torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        data = dataclasses.replace(data, y=y, labels=y)
        res = _fedce_run(cfg, data, out / "loo" / f"noisy-fedce-seed{seed}")
        last = res.history[-1]
        avg = leave_one_out(noisy, [f"seed={seed}", "method.name=fedavg"], data=data, out=out / "loo" / f"noisy-fedavg-seed{seed}")
        rows.append({"seed": seed, "fedce_final": last["fedce_contribution"], "fedce_G": last["fedce_gradient"],
                     "fedce_M": last["fedce_data"], "fedce_accuracy": res.summary["final_metric"], "loo_fedavg": avg,
                     "pearson_final_vs_loo_fedavg": pearson(last["fedce_contribution"], avg["contribution"])})
        print(f"  noisy seed {seed}: FedCE c = {np.round(last['fedce_contribution'], 3).tolist()}, "
              f"LOO (FedAvg) = {np.round(avg['contribution'], 4).tolist()}", flush=True)
    results["digits_noisy_client0"] = rows
    (HERE / "loo.json").write_text(json.dumps(results, indent=1) + "\n")


# -- collecting ------------------------------------------------------------------------------


def _get(tree, dotted, default=None):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


_STEPS_CACHE: dict = {}


def mean_local_steps(cfg: dict, records: list[dict]) -> float | None:
    """Mean local steps per client update: q-FFL records it (``qffl_mean_local_steps``); for
    runs made before it did, recomputed from the config (the partition and the client
    settings; every client takes part in every round here, so the mean is over clients)."""
    logged = [r["qffl_mean_local_steps"] for r in records if r.get("qffl_mean_local_steps") is not None]
    if logged:
        return float(np.mean(logged))
    from fedweave.config import load_config
    from fedweave.data.federated import build_federated
    from fedweave.train import TrainSettings

    c = cfg if not isinstance(cfg, dict) else load_config(cfg)
    key = (c.data.model_dump_json(), c.client.epochs, c.client.local_steps, c.client.batch_size)
    if key not in _STEPS_CACHE:
        data = build_federated(c.data)
        settings = TrainSettings(epochs=None if c.client.local_steps else c.client.epochs, local_steps=c.client.local_steps,
                                 batch_size=c.client.batch_size, lr=c.client.lr)
        _STEPS_CACHE[key] = float(np.mean([settings.num_steps(len(idx)) for idx in data.client_train]))
    return _STEPS_CACHE[key]


def collect(out: Path) -> list[dict]:
    failed = sorted(str(e.parent.relative_to(out)) for e in out.glob("*/**/error.txt"))
    if failed:
        print(f"WARNING: {len(failed)} runs failed (see their error.txt) and are left out:\n  " + "\n  ".join(failed))
    rows = []
    for summary_path in sorted(out.glob("*/**/summary.json")):
        run = summary_path.parent
        if "loo" in run.relative_to(out).parts:
            continue
        s = json.loads(summary_path.read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        m = cfg["method"]
        method = m["name"]
        if method == "qffl":
            method = f"qffl(q={float(m.get('q', 1.0))})"
        if method == "ldawa":  # the unit and normalisation are in the row name (the default unit is tensor)
            method = f"ldawa[{m.get('granularity', 'tensor')}{',norm' if m.get('normalize') else ''}]"
        if m.get("weighting"):
            method = f"{method}+{m['weighting']}"
        last = records[-1] if records else {}
        rows.append({
            "part": run.relative_to(out).parts[0],
            "dataset": cfg["data"]["dataset"], "partition": cfg["data"]["partition"]["kind"],
            "alpha": cfg["data"]["partition"]["alpha"] if cfg["data"]["partition"]["kind"] == "dirichlet" else "",
            "method": method, "seed": cfg["seed"], "data_seed": cfg["data"]["seed"], "status": s["status"],
            "metric": s["metric_name"], "final": s["final_metric"], "best": s["best_metric"],
            "client_mean": s.get("client_acc_mean"), "client_worst10": s.get("client_acc_worst10"),
            "client_std": s.get("client_acc_std"), "jain": s.get("jain_index"),
            "fedlaw_gamma": last.get("fedlaw_gamma"), "qffl_step_scale": last.get("qffl_step_scale"),
            "mean_local_steps": mean_local_steps(cfg, records) if method.startswith("qffl") else None,
            "ldawa_delta": (float(np.mean([r["ldawa_delta_mean"] for r in records if "ldawa_delta_mean" in r]))
                            if any("ldawa_delta_mean" in r for r in records) else None),
            "fedce_max_c": max(last["fedce_contribution"]) if "fedce_contribution" in last else None,
            "fedce_min_c": min(last["fedce_contribution"]) if "fedce_contribution" in last else None,
            "wall_s": s.get("wall_time_s"),
        })
    return rows


def _ms(values, digits=3, scale=1.0):
    v = [x * scale for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "–"
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _paired(rows, key_rows, base_rows, field="final", scale=100.0):  # noqa: ARG001 (rows: kept for symmetry)
    """mean ± std over replicates of (method − FedAvg), paired by (seed, data_seed)."""
    base = {(r["seed"], r["data_seed"]): r[field] for r in base_rows}
    diffs = [scale * (r[field] - base[(r["seed"], r["data_seed"])]) for r in key_rows if (r["seed"], r["data_seed"]) in base]
    if not diffs:
        return "–"
    return f"{np.mean(diffs):+.2f} ± {np.std(diffs, ddof=1) if len(diffs) > 1 else 0:.2f}"


ORDER = ["fedavg", "fedavg+uniform", "feddisco", "fedlaw", "ldawa[module]", "ldawa[module]+size", "ldawa[tensor]",
         "ldawa[tensor,norm]", "fedce", "qffl(q=0.1)", "qffl(q=1.0)"]


def tables(rows: list[dict]) -> str:
    out = []
    main = [r for r in rows if r["part"] in ("main", "ablation", "ldawa-variants") and r["status"] == "completed"]
    if main:
        out.append("## Main comparison (test accuracy, %, mean ± std over 3 replicates)\n")
        for ds in ("digits", "mnist5k", "mnist1d"):
            if not any(r["dataset"] == ds for r in main):
                continue
            out.append(f"### {ds}\n")
            out.append("| method | α | accuracy | Δ vs FedAvg | client mean | client worst | Jain | extra |")
            out.append("|---|---|---|---|---|---|---|---|")
            for alpha in (0.1, 0.5):
                sel = [r for r in main if r["dataset"] == ds and r["alpha"] == alpha]
                base = [r for r in sel if r["method"] == "fedavg"]
                for method in ORDER:
                    mr = [r for r in sel if r["method"] == method]
                    if not mr:
                        continue
                    extra = ""
                    if method == "fedlaw":
                        extra = f"γ = {_ms([r['fedlaw_gamma'] for r in mr], 3)}"
                    elif method.startswith("qffl"):
                        extra = (f"step scale {_ms([r['qffl_step_scale'] for r in mr], 3)}, "
                                 f"mean local steps {_ms([r['mean_local_steps'] for r in mr], 1)}")
                    elif method.startswith("ldawa") and any(r["ldawa_delta"] is not None for r in mr):
                        extra = f"mean δ {_ms([r['ldawa_delta'] for r in mr], 3)}"
                    elif method == "fedce":
                        extra = f"c ∈ [{np.mean([r['fedce_min_c'] for r in mr]):.3f}, {np.mean([r['fedce_max_c'] for r in mr]):.3f}]"
                    out.append(
                        f"| {method} | {alpha} | {_ms([r['final'] for r in mr], 1, 100)} | "
                        f"{'' if method == 'fedavg' else _paired(rows, mr, base)} | {_ms([r['client_mean'] for r in mr], 1, 100)} | "
                        f"{_ms([r['client_worst10'] for r in mr], 1, 100)} | {_ms([r['jain'] for r in mr], 3)} | {extra} |")
            out.append("")
    for part, title in (("niid2", "2 local epochs"), ("niid2-e10", "10 local epochs (as FedDisco's script)")):
        niid = [r for r in rows if r["part"] == part and r["status"] == "completed"]
        if not niid:
            continue
        out.append(f"## FedDisco's NIID-2 on mnist5k, {title} (test accuracy, %, 3 seeds)\n")
        out.append("| method | accuracy | Δ vs size weights | client mean | client worst | Jain |")
        out.append("|---|---|---|---|---|---|")
        for method in ("fedavg+size", "fedavg+disco", "fedprox+size", "fedprox+disco"):
            mr = [r for r in niid if r["method"] == method]
            if not mr:
                continue
            base = [r for r in niid if r["method"] == method.split("+")[0] + "+size"]
            out.append(f"| {method} | {_ms([r['final'] for r in mr], 1, 100)} | "
                       f"{'' if method.endswith('size') else _paired(rows, mr, base)} | {_ms([r['client_mean'] for r in mr], 1, 100)} | "
                       f"{_ms([r['client_worst10'] for r in mr], 1, 100)} | {_ms([r['jain'] for r in mr], 3)} |")
        out.append("")
    long = [r for r in rows if r["part"] == "qffl-long" and r["status"] == "completed"]
    if long:
        out.append("## q-FFL given 120 rounds: digits, Dirichlet 0.1 (test accuracy and per-client validation accuracy, %, 3 replicates)\n")
        out.append("| method | accuracy | Δ vs FedAvg | client mean | client std | client worst | Jain | step scale | mean local steps |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        base = [r for r in long if r["method"] == "fedavg+size"]
        for method in ("fedavg+size", "fedavg+uniform", "qffl(q=0.1)", "qffl(q=1.0)"):
            mr = [r for r in long if r["method"] == method]
            if not mr:
                continue
            out.append(f"| {method} | {_ms([r['final'] for r in mr], 1, 100)} | {'' if method == 'fedavg+size' else _paired(rows, mr, base)} | "
                       f"{_ms([r['client_mean'] for r in mr], 1, 100)} | {_ms([r['client_std'] for r in mr], 1, 100)} | "
                       f"{_ms([r['client_worst10'] for r in mr], 1, 100)} | {_ms([r['jain'] for r in mr], 3)} | "
                       f"{_ms([r['qffl_step_scale'] for r in mr], 3) if method.startswith('qffl') else ''} | "
                       f"{_ms([r['mean_local_steps'] for r in mr], 1) if method.startswith('qffl') else ''} |")
        out.append("")
    rest = [r for r in rows if r["part"] == "restoration" and r["status"] == "completed"]
    if rest:
        out.append("## x2 super-resolution of mnist5k (test PSNR, dB, 3 replicates; bicubic input: 21.6 dB)\n")
        out.append("| method | client loss | weighting | PSNR | Δ vs FedAvg | client mean | client worst |")
        out.append("|---|---|---|---|---|---|---|")
        names = {"fedavg+size": ("FedAvg", "Charbonnier", "size"), "fedavg+loss": ("loss-aware weights only", "Charbonnier", "loss"),
                 "fedvsr+size": ("HF loss only", "Charbonnier + HF", "size"), "fedvsr+loss": ("FedVSR", "Charbonnier + HF", "loss")}
        base = [r for r in rest if r["method"] == "fedavg+size"]
        for method, (label, loss, weighting) in names.items():
            mr = [r for r in rest if r["method"] == method]
            out.append(f"| {label} | {loss} | {weighting} | {_ms([r['final'] for r in mr], 2)} | "
                       f"{'' if method == 'fedavg+size' else _paired(rows, mr, base, scale=1.0)} | "
                       f"{_ms([r['client_mean'] for r in mr], 2)} | {_ms([r['client_worst10'] for r in mr], 2)} |")
        out.append("")
    return "\n".join(out)


def _number(v: str):
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def rows_from_csv() -> list[dict]:
    """The rows of results.csv, with q-FFL's mean local steps filled in from each run's
    config (the dataset's YAML here with the run's data seed and α) where missing."""
    with open(HERE / "results.csv", newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        if str(r["method"]).startswith("qffl") and r.get("mean_local_steps") is None:
            cfg = fedweave.load_config(HERE / f"{r['dataset']}.yaml",
                                       [f"data.seed={r['data_seed']}", f"data.partition.alpha={r['alpha']}", "method.name=qffl"])
            r["mean_local_steps"] = mean_local_steps(cfg, [])
        r.setdefault("mean_local_steps", None)
    return rows


def _key(r: dict) -> tuple:
    return (r["part"], r["dataset"], r["partition"], str(r["alpha"]), r["method"], r["seed"], r["data_seed"])


def merge(old: list[dict], new: list[dict], drop: set[str] = frozenset()) -> list[dict]:
    """``old`` (results.csv) without the rows of methods in ``drop`` and without the rows that
    ``new`` (fresh runs) redo — same part, dataset, α, method, seed and data seed — then ``new``."""
    fresh = {_key(r) for r in new}
    return [r for r in old if r["method"] not in drop and _key(r) not in fresh] + new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="main,ablation,ldawa_variants,niid2,niid2_e10,qffl_long,restoration,loo")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "weighting"))
    ap.add_argument("--tables-only", action="store_true",
                    help="rebuild results.csv and tables.md from results.csv (no runs needed)")
    ap.add_argument("--merge", action="store_true",
                    help="after running --parts, keep results.csv's other rows: the runs in --out replace the rows "
                         "they redo (same part, dataset, α, method, seeds) and the rest are kept")
    ap.add_argument("--drop", default="",
                    help="comma-separated row names (method column) removed from results.csv first, e.g. rows "
                         "made by code that has since changed")
    args = ap.parse_args()
    os.chdir(ROOT)
    out = Path(args.out)
    parts = {"main": part_main, "main_ldawa": part_main_ldawa, "ablation": part_ablation, "ablation_ldawa": part_ablation_ldawa,
             "niid2": part_niid2, "niid2_e10": part_niid2_e10, "qffl_long": part_qffl_long, "restoration": part_restoration,
             "loo": part_loo, "ldawa_variants": part_ldawa_variants}
    unknown = [name for name in filter(None, args.parts.split(",")) if name not in parts]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(parts)}")
    drop = set(filter(None, args.drop.split(",")))
    if args.tables_only:
        rows = [r for r in rows_from_csv() if r["method"] not in drop]
        known = {r["part"] for r in rows}
        if out.exists():  # parts run since results.csv was written (e.g. ldawa_variants)
            rows += [r for r in collect(out) if r["part"] not in known]
    else:
        for name in filter(None, args.parts.split(",")):
            parts[name](out, args.jobs)
        rows = merge(rows_from_csv(), collect(out), drop) if args.merge else collect(out)
    with open(HERE / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (HERE / "tables.md").write_text(tables(rows) + "\n")
    print(f"{len(rows)} runs collected; tables in {HERE / 'tables.md'}")


if __name__ == "__main__":
    main()
