"""Where the vectorized executor's time goes, and when its kernels pay.

Two measurements behind docs/results/scale.md (timings reported, never asserted):

``replay``
    W1 (the workload of ``bench/overhead.py``) with the vectorized executor; every
    round's cohort is trained several times in a row under each variant, alternately, in
    one process, and the paired per-round ratios are reported. Variants: ``real`` (the
    bmm kernel as shipped) and ``matmul_only`` (only its 8 matrix products per step:
    the floor that better element-wise code could reach). The run's own numbers come
    from the last variant (``real``), so it finishes as a normal run.
``kernels``
    scikit-learn's digits, 50 clients, 10 per round, batch 16, 12 rounds: median seconds
    per round of serial, vectorized with the torch.func kernel and vectorized with the
    bmm kernel (where the model allows it), for the CNN and the MLP.

``conv``
    the two conv forms (``conv``: clients as groups of a grouped convolution;
    ``conv-loop``: clients in turn, channels-last) against serial (and, with
    ``--with-func``, the torch.func kernel), 10 clients per round, batch 32, 1 epoch,
    1 thread: digits with ``cnn``, mnist5k with ``lenet5`` and ``cnn``, CIFAR-shaped
    synthetic data (5,000 × 3 × 32 × 32, 10 classes, Dirichlet 0.5, 50 clients) with the
    GroupNorm ``resnet``, ``lenet5`` and ``cnn``. The executors
    alternate within each repeat; each round is timed by the CPU time of the process's
    one compute thread (``time.thread_time``, robust to other jobs on the machine) and by
    the wall clock; the figures are medians over rounds 2 … R−1 of every repeat.

Usage::

    .venv/bin/python bench/vectorized.py replay --threads 2 --repeats 5
    .venv/bin/python bench/vectorized.py kernels --threads 1
    .venv/bin/python bench/vectorized.py conv --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedweave.config import load_config  # noqa: E402
from fedweave.experiment import _execute, build_experiment  # noqa: E402
from fedweave.rundir import RunDirectory  # noqa: E402
from fedweave.sim import vectorized as V  # noqa: E402


def _matmul_only_step(self, k, x, y, weight, opt, first):
    """The bmm kernel's matrix products alone (no bias, activation or loss): a floor."""
    p = [t[:k] for t in opt.params]
    linears = [layer for layer in self.layers if layer.kind == "linear"]
    h, inputs = x.reshape(k, x.shape[1], -1), []
    for layer in linears:
        inputs.append(h)
        h = torch.bmm(h, p[layer.weight].transpose(1, 2))
    delta = h * 1e-6
    for i in range(len(linears) - 1, -1, -1):
        w = p[linears[i].weight]
        delta_in = torch.bmm(delta, w) if i > 0 else None
        w.baddbmm_(delta.transpose(1, 2), inputs[i], alpha=-1e-9)
        delta = delta_in
    return torch.zeros(k)


def replay(threads: int, repeats: int) -> None:
    import overhead as ov

    variants = {"matmul_only": _matmul_only_step, "real": V.MLPKernel.step}
    tmp = Path(tempfile.mkdtemp())
    npz = tmp / "w1.npz"
    ov.make_data(npz)
    raw = ov.make_config(npz, 20, threads)
    raw["executor"] = {"kind": "vectorized", "threads": threads}
    cfg = load_config(raw)
    cfg.output.dir = str(tmp / "run")
    exp = build_experiment(cfg)
    run_dir = RunDirectory(cfg.output.dir)
    run_dir.create(cfg.to_yaml())
    original = V.VectorizedExecutor._run_pending
    times: dict[str, list[float]] = {name: [] for name in variants}

    def run_pending(self):
        pending = dict(self.pending)
        for _ in range(repeats):
            for name, step in variants.items():
                self.pending = dict(pending)
                V.MLPKernel.step = step
                t0 = time.perf_counter()
                original(self)
                times[name].append(time.perf_counter() - t0)
        V.MLPKernel.step = variants["real"]

    V.VectorizedExecutor._run_pending = run_pending
    try:
        _execute(exp, run_dir, None, None)
    finally:
        V.VectorizedExecutor._run_pending = original
        V.MLPKernel.step = variants["real"]
    real = times["real"]
    print(f"W1 cohorts replayed, threads={threads}, {repeats} repeats per round per variant")
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, real))
        print(f"  {name:12s} median {statistics.median(t) * 1e3:6.1f} ms per round's cohort, ÷ real {ratio:.3f}")


def _seconds_per_round(overrides: list[str]) -> tuple[float, str]:
    marks: list[float] = []
    cfg = load_config(None, overrides)
    cfg.output.dir = tempfile.mkdtemp() + "/run"
    exp = build_experiment(cfg)
    run_dir = RunDirectory(cfg.output.dir)
    run_dir.create(cfg.to_yaml())
    _execute(exp, run_dir, None, lambda done, total, record: marks.append(time.perf_counter()))
    rounds = [b - a for a, b in zip(marks, marks[1:])][:-1]  # rounds 2..R-1 (R evaluates)
    return statistics.median(rounds), exp.executor.describe()


def kernels(threads: int, repeats: int) -> None:
    base = ["data.dataset=digits", "data.partition.num_clients=50", "schedule.clients_per_round=10",
            "schedule.rounds=12", "eval.every=12", "client.batch_size=16", f"executor.threads={threads}"]
    executors = {"serial": [], "vectorized-func": ["executor.kind=vectorized", "executor.vectorized_kernel=func"],
                 "vectorized": ["executor.kind=vectorized"]}
    print(f"digits, 50 clients, 10 per round, batch 16, threads={threads}; min over {repeats} runs of the median s/round")
    for model in ("cnn", "mlp"):
        best: dict[str, tuple[float, str]] = {}
        for _ in range(repeats):
            for name, extra in executors.items():
                sec, what = _seconds_per_round(base + [f"model.name={model}"] + extra)
                best[name] = min(best.get(name, (sec, what)), (sec, what))
        serial = best["serial"][0]
        for name, (sec, what) in best.items():
            print(f"  {model:4s} {name:16s} {sec * 1e3:7.1f} ms  {sec / serial:5.2f}× serial  ({what})")


def _conv_round_times(overrides: list[str]) -> tuple[list[float], list[float], str]:
    """CPU (thread) and wall seconds of each round 2 … R−1 of one run."""
    cpu, wall = [time.thread_time()], [time.perf_counter()]
    cfg = load_config(None, overrides)
    cfg.output.dir = tempfile.mkdtemp() + "/run"
    exp = build_experiment(cfg)
    run_dir = RunDirectory(cfg.output.dir)
    run_dir.create(cfg.to_yaml())

    def mark(done, total, record):
        cpu.append(time.thread_time())
        wall.append(time.perf_counter())

    _execute(exp, run_dir, None, mark)
    # marks[0] is before the build; rounds 2 … R−1 exclude the first (warm-up) and the last (evaluation)
    cpu_rounds = [b - a for a, b in zip(cpu[1:], cpu[2:])][:-1]
    wall_rounds = [b - a for a, b in zip(wall[1:], wall[2:])][:-1]
    return cpu_rounds, wall_rounds, exp.executor.describe()


def _cifar_like(path: Path, n: int = 5000) -> None:
    """CIFAR-shaped synthetic data: x = mean[y] + N(0, 1) in 3 × 32 × 32, 10 classes."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    means = rng.normal(scale=0.5, size=(10, 3, 32, 32)).astype(np.float32)
    x = means[y] + rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
    np.savez(path, x=x, y=y, x_test=x[:500], y_test=y[:500])


def conv(repeats: int, rounds: int, only: list[str] | None, with_func: bool = False) -> None:
    npz = Path(tempfile.mkdtemp()) / "cifar_like.npz"
    _cifar_like(npz)
    common = ["schedule.clients_per_round=10", f"schedule.rounds={rounds}", f"eval.every={rounds}",
              "client.batch_size=32", "client.epochs=1", "client.lr=0.05", "executor.threads=1"]
    workloads = {
        "digits/cnn": ["data.dataset=digits", "data.partition.num_clients=50", "model.name=cnn"],
        "mnist5k/lenet5": ["data.dataset=mnist5k", "data.partition.num_clients=50", "model.name=lenet5"],
        "cifar-like/resnet": ["data.dataset=npz", f"data.root={npz}", "data.partition.num_clients=50",
                              "model.name=resnet", "model.norm=group"],
        # where the rule's boundary lies: a small model on large maps, a wide one on larger maps
        "cifar-like/lenet5": ["data.dataset=npz", f"data.root={npz}", "data.partition.num_clients=50",
                              "model.name=lenet5"],
        "mnist5k/cnn": ["data.dataset=mnist5k", "data.partition.num_clients=50", "model.name=cnn"],
        "cifar-like/cnn": ["data.dataset=npz", f"data.root={npz}", "data.partition.num_clients=50", "model.name=cnn"],
    }
    executors = {"serial": [], "conv": ["executor.kind=vectorized", "executor.vectorized_kernel=conv"],
                 "conv-loop": ["executor.kind=vectorized", "executor.vectorized_kernel=conv-loop"]}
    if with_func:
        executors["func"] = ["executor.kind=vectorized", "executor.vectorized_kernel=func"]
    print(f"10 clients per round, batch 32, 1 thread; {repeats} repeats × rounds 2..{rounds - 1}, executors alternating")
    for name, extra in workloads.items():
        if only and name not in only:
            continue
        cpu: dict[str, list[float]] = {e: [] for e in executors}
        wall: dict[str, list[float]] = {e: [] for e in executors}
        what = {}
        for r in range(repeats):
            order = list(executors)[r % len(executors):] + list(executors)[: r % len(executors)]
            for e in order:
                c, w, what[e] = _conv_round_times(common + extra + executors[e])
                cpu[e] += c
                wall[e] += w
        s_cpu, s_wall = statistics.median(cpu["serial"]), statistics.median(wall["serial"])
        for e in executors:
            c, w = statistics.median(cpu[e]), statistics.median(wall[e])
            print(f"  {name:18s} {e:9s} CPU {c * 1e3:8.1f} ms/round ({c / s_cpu:4.2f}× serial)  "
                  f"wall {w * 1e3:8.1f} ms ({w / s_wall:4.2f}×)  {what[e]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["replay", "kernels", "conv"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="replay: 5; kernels: 2; conv: 3")
    ap.add_argument("--rounds", type=int, default=6, help="conv: rounds per run")
    ap.add_argument("--only", default=None, help="conv: comma-separated workloads (digits/cnn,mnist5k/lenet5,cifar-like/resnet)")
    ap.add_argument("--with-func", action="store_true", help="conv: the torch.func kernel too")
    args = ap.parse_args(argv)
    if args.what == "replay":
        replay(args.threads, args.repeats or 5)
    elif args.what == "kernels":
        kernels(args.threads, args.repeats or 2)
    else:
        conv(args.repeats or 3, args.rounds, args.only.split(",") if args.only else None, args.with_func)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
