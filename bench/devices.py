"""Executors on a device: W1 (MLP) and W2 (CNN) — a plain PyTorch loop, fedweave's serial
and vectorized executors, side by side in one process, on ``--device`` (cpu or cuda).

W1: 100 clients of MNIST-shaped synthetic data (60,000 x 784), the 2NN MLP 784-200-200-10
(the workload of ``bench/overhead.py``). W2: 100 clients of CIFAR-shaped synthetic data
(50,000 x 3 x 32 x 32, 10 classes: x = mean[y] + N(0, 1), fixed numpy seed), the built-in
``cnn`` (McMahan et al. 2017). Both: Dirichlet(0.5) partition, 1 local epoch, batch 32,
plain SGD lr 0.05, 20 rounds, 10 clients per round unless ``--per-round`` says otherwise
(it takes a list: 10,100,1000; more clients per round than registered raises the number
of clients to match, keeping the examples per client of the workload), one evaluation
after the last round. ``--scale`` shrinks the data (the examples per client) for a quick look.

Runners: ``plain``, ``serial``, ``vectorized`` (its ``auto`` kernel choice) or
``vectorized:<kernel>`` (``executor.vectorized_kernel``: ``conv``, ``conv-loop``, ``func``).

Per runner: seconds per round (median over rounds 2..R-1: round 1 pays first-call costs),
clients trained per second, the ratio to the plain loop and to serial; the achieved
GFLOP/s (training ≈ 3 x the forward's 2 x multiply-accumulates of its Linear and Conv2d
layers per example) and its share of the device's fp32 matmul rate measured here
(1024 x 1024 products on CPU, 4096 x 4096 on CUDA) — on W2 this share says how much room
any batched kernel has left. The plain loop trains
cohorts drawn by its own seeded generator from the same partition: per-round times are
comparable, the trained models are not. Never asserts a time.

    python bench/devices.py --workload w2 --rounds 5 --scale 0.1          # a quick CPU look
    python bench/devices.py --workload w2 --threads 1 --clock cpu          # CPU time: robust to a busy machine
    python bench/devices.py --runners serial,vectorized:conv,vectorized:conv-loop --scale 0.2
    python bench/devices.py --workload w1 --device cuda --per-round 10,100,1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedweave.config import load_config  # noqa: E402
from fedweave.core.allocator import retain_freed_memory  # noqa: E402
from fedweave.experiment import build_experiment, run  # noqa: E402
from fedweave.models import build_model  # noqa: E402

WORKLOADS = {
    "w1": {"shape": (784,), "n": 60_000, "model": {"name": "mlp", "hidden": [200, 200]}},
    "w2": {"shape": (3, 32, 32), "n": 50_000, "model": {"name": "cnn"}},
}
CLIENTS, CLASSES, ALPHA, BATCH, LR, SEED = 100, 10, 0.5, 32, 0.05, 0
CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU time of this process)


def make_data(path: Path, workload: str, n: int) -> None:
    rng = np.random.default_rng(1234)
    shape = WORKLOADS[workload]["shape"]
    means = rng.normal(0.0, 0.5, size=(CLASSES, *shape)).astype(np.float32)

    def draw(k: int):
        y = rng.integers(0, CLASSES, size=k).astype(np.int64)
        x = rng.standard_normal((k, *shape), dtype=np.float32) + means[y]
        return x, y

    x, y = draw(n)
    xt, yt = draw(max(1000, n // 6))
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)


def config(npz: Path, workload: str, clients: int, per_round: int, rounds: int, kind: str, device: str) -> dict:
    return {
        "name": f"devices-{workload}", "seed": SEED,
        "data": {"dataset": "npz", "root": str(npz), "seed": 0, "client_val_fraction": 0.0,
                 "partition": {"kind": "dirichlet", "num_clients": clients, "alpha": ALPHA}},
        "model": WORKLOADS[workload]["model"], "method": {"name": "fedavg"},
        "client": {"epochs": 1, "batch_size": BATCH, "lr": LR},
        "schedule": {"rounds": rounds, "clients_per_round": per_round},
        "eval": {"every": rounds, "batch_size": 1024},
        # on a GPU let a cohort hold up to 1,024 clients (16 GiB of stacked tensors and activations)
        "executor": {"kind": kind, "device": device, "max_cohort": 1024,
                     **({"cohort_memory_mb": 16384} if device.startswith("cuda") else {})},
    }


def per_round_times(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    inner = gaps[1:-1] or gaps
    return statistics.median(inner)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(cfg: dict, rounds: int, device: torch.device) -> dict:
    """FedAvg by hand on ``device``: a model per client, torch.optim.SGD, minibatches by indexing."""
    exp = build_experiment(load_config(cfg))
    data = exp.data
    x, y = data.x.to(device), data.y.to(device)
    parts = [p.to(device) for p in data.client_train]
    shape, classes = tuple(data.input_shape), data.num_classes
    m = cfg["model"]
    make = lambda: build_model(m["name"], shape, classes, hidden=m.get("hidden")).to(device)  # noqa: E731
    global_sd = {k: v.clone() for k, v in make().state_dict().items()}
    rng = np.random.default_rng(SEED)
    k = cfg["schedule"]["clients_per_round"]
    stamps = [CLOCK()]
    for _ in range(rounds):
        states, sizes = [], []
        for cid in rng.choice(len(parts), size=k, replace=False):
            idx = parts[cid]
            model = make()
            model.load_state_dict(global_sd)
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            order = idx[torch.randperm(len(idx), device=device)]
            for start in range(0, len(idx), BATCH):
                b = order[start : start + BATCH]
                opt.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                opt.step()
            states.append(model.state_dict())
            sizes.append(len(idx))
        total = float(sum(sizes))
        with torch.no_grad():
            global_sd = {key: sum(sd[key] * (n / total) for sd, n in zip(states, sizes)) for key in global_sd}
        sync(device)
        stamps.append(CLOCK())
    return {"s_per_round": per_round_times(stamps), "examples_per_round": None}


def fedweave_runner(cfg: dict, out: Path, device: torch.device) -> dict:
    stamps = [CLOCK()]

    def progress(done, total, record):
        sync(device)
        stamps.append(CLOCK())

    result = run(cfg, out=out, progress=progress, overwrite=True)
    return {"s_per_round": per_round_times(stamps), "executor": result.summary.get("executor"),
            "device": result.summary.get("device"), "final_accuracy": result.summary.get("final_accuracy")}


def matmul_gflops(device: torch.device, n: int = 4096, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t = CLOCK()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (CLOCK() - t) / 1e9


def training_flops_per_example(workload: str) -> float:
    """3 x the forward's 2 x multiply-accumulates of the model's Linear and Conv2d layers
    (backward = input gradients + weight gradients, each the forward's size; the first
    layer's input gradient, which training never computes, is counted too, so the rate
    below is a slight overestimate). Counted by forward hooks on one example."""
    spec = WORKLOADS[workload]
    model = build_model(spec["model"]["name"], spec["shape"], CLASSES, hidden=spec["model"].get("hidden"))
    macs = 0

    def count(layer, inputs, output):
        nonlocal macs
        if isinstance(layer, torch.nn.Linear):
            macs += layer.in_features * layer.out_features
        else:
            kh, kw = layer.kernel_size
            macs += output[0].numel() * (layer.in_channels // layer.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        model(torch.zeros(1, *spec["shape"]))
    for h in hooks:
        h.remove()
    return 3 * 2 * macs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=list(WORKLOADS), default="w2")
    ap.add_argument("--device", default="cpu", help="executor.device of every runner (cpu, cuda, cuda:N)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", default="10", help="comma-separated clients per round (default 10)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the examples (quick runs)")
    ap.add_argument("--runners", default="plain,serial,vectorized")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time per round, which other jobs on a shared machine "
                         "barely change (use with --threads 1; with more threads it adds their times)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc thresholds alone (executor.retain_memory=false for every runner)")
    args = ap.parse_args(argv)
    # process-wide and sticky: set before any runner, so the plain loop gets it too
    retained = not args.system_malloc and retain_freed_memory()
    print(f"allocator: freed memory {'retained (executor.retain_memory)' if retained else 'returned to the OS (glibc defaults)'} for every runner")
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = WORKLOADS[args.workload]
    n = max(1000, int(spec["n"] * args.scale))
    base_clients = CLIENTS  # --scale shrinks the examples per client, not the clients
    peak = matmul_gflops(device, 4096 if device.type == "cuda" else 2048, 10 if device.type == "cuda" else 5)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.workload}: {n} examples, device {device}, {args.threads} thread(s), {args.clock} clock, "
          f"fp32 matmul {peak:.1f} GFLOP/s, load average {load:.2f}")
    flops_per_example = training_flops_per_example(args.workload)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedweave-devices-") as tmp:
        tmp = Path(tmp)
        for per_round in [int(v) for v in args.per_round.split(",")]:
            clients = max(base_clients, per_round)
            # keep the examples per client of the workload when there are more clients
            npz = tmp / f"{args.workload}-{clients}.npz"
            make_data(npz, args.workload, max(n, n * clients // base_clients))
            results = {}
            for runner in args.runners.split(","):
                kind, _, kernel = ("serial" if runner == "plain" else runner).partition(":")
                cfg = config(npz, args.workload, clients, per_round, args.rounds, kind, args.device)
                cfg["executor"]["threads"] = args.threads
                cfg["executor"]["retain_memory"] = not args.system_malloc
                if kernel:
                    cfg["executor"]["vectorized_kernel"] = kernel
                if runner == "plain":
                    results[runner] = plain(cfg, args.rounds, device)
                else:
                    results[runner] = fedweave_runner(cfg, tmp / f"run-{runner}-{per_round}", device)
                r = results[runner]
                r["clients_per_s"] = per_round / r["s_per_round"]
            examples_per_client = max(n, n * clients // base_clients) / clients
            for runner, r in results.items():
                row = {"workload": args.workload, "per_round": per_round, "runner": runner, **r,
                       "vs_plain": r["s_per_round"] / results["plain"]["s_per_round"] if "plain" in results else None,
                       "vs_serial": r["s_per_round"] / results["serial"]["s_per_round"] if "serial" in results else None}
                row["gflops"] = r["clients_per_s"] * examples_per_client * flops_per_example / 1e9
                row["share_of_matmul"] = row["gflops"] / peak
                rows.append(row)
    print(f"{'K':>6} {'runner':>20} {'s/round':>9} {'clients/s':>10} {'x plain':>8} {'x serial':>9} {'GFLOP/s':>8} {'% mm':>6}")
    for r in rows:
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        print(f"{r['per_round']:>6} {r['runner']:>20} {r['s_per_round']:>9.3f} {r['clients_per_s']:>10.1f} "
              f"{fmt(r['vs_plain'], '8.2f'):>8} {fmt(r['vs_serial'], '9.2f'):>9} {fmt(r.get('gflops'), '8.2f'):>8} "
              f"{fmt(100 * r['share_of_matmul'] if 'share_of_matmul' in r else None, '6.1f'):>6}")
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": peak, "load": load, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
