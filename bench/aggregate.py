"""Robust combiners on K = 50 updates of P = 10^6 parameters: seconds, share of the machine's
limit, peak memory.

For each combiner of :mod:`fedweave.aggregate` (median, trimmed mean β = 0.2, Krum and
Multi-Krum with f = 5, Bulyan with f = 5, and the plain weighted mean for scale) this
measures, on one ``[K, P]`` float32 tensor:

* **seconds** — the median over ``--repeats`` runs, the combiners interleaved within each
  repeat so that drift in the machine's speed hits them alike;
* **share of the limit** — Krum, Multi-Krum and Bulyan are bounded by one K×K Gram matrix,
  about 2K²P flops: the achieved flop rate over this machine's float32 matmul peak
  (measured here on a 2048³ product). The median, the trimmed mean and the mean are bounded
  by reading K·P floats once: the achieved read rate over this machine's read bandwidth
  (measured here as the best of ``torch.sum`` over the same tensor);
* **peak extra memory** — in a fresh subprocess per combiner, the growth of the peak
  resident set during the call, as a multiple of the K·P input.

Reference (given in the issue, Flower 1.42's numpy helpers on the project's machine):
Krum (f = 5) 0.9 s, median 0.8 s, trimmed mean 1.0 s. Targets: Krum and Bulyan ≥ 3× faster,
median and trimmed mean ≥ 1.5× faster. Because these shared machines vary in speed by 2×,
the run also times ``numpy.median(axis=0)`` — exactly what Flower's median helper does — and
scales the reference figures by (this run's numpy median / 0.8 s) to compare like with like
("calibrated" columns).

Usage::

    .venv/bin/python bench/aggregate.py                  # K=50, P=1e6, 5 repeats, 2 threads
    .venv/bin/python bench/aggregate.py --repeats 9 --json bench-aggregate.json
    .venv/bin/python bench/aggregate.py --p 100000       # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedweave.aggregate import bulyan, krum, median, trimmed_mean, weighted_mean  # noqa: E402

REFERENCE_S = {"krum": 0.9, "median": 0.8, "trimmed_mean": 1.0, "bulyan": 0.9, "multikrum": 0.9}
TARGET = {"krum": 3.0, "bulyan": 3.0, "median": 1.5, "trimmed_mean": 1.5}
GRAM_BOUND = ("krum", "multikrum", "bulyan")


def combiners(k: int, f: int):
    w = torch.ones(k)
    return {
        "mean": lambda u: weighted_mean(u, w),
        "median": lambda u: median(u),
        "trimmed_mean": lambda u: trimmed_mean(u, 0.2),
        "krum": lambda u: krum(u, f, 1),
        "multikrum": lambda u: krum(u, f, k - f),
        "bulyan": lambda u: bulyan(u, f),
    }


def make_updates(k: int, p: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(k, p, generator=gen)


def matmul_peak(threads: int, repeats: int = 5, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def read_bandwidth(u: torch.Tensor, repeats: int = 5) -> float:
    u.sum()
    best = min(_time(lambda: u.sum()) for _ in range(repeats))
    return u.numel() * u.element_size() / best


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def numpy_median_s(u: torch.Tensor, repeats: int) -> float:
    a = u.numpy()
    return statistics.median(_time(lambda: np.median(a, axis=0)) for _ in range(repeats))


def memory_child(name: str, k: int, p: int, f: int, threads: int) -> None:
    """Subprocess: print the peak-RSS growth (bytes) of one call."""
    torch.set_num_threads(threads)
    u = make_updates(k, p)
    fn = combiners(k, f)[name]
    before = _peak_rss()
    fn(u)
    print(_peak_rss() - before)


def _peak_rss() -> int:
    """This process's peak resident set in bytes (VmHWM: unlike ru_maxrss, not inherited
    from the parent across fork/exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(name: str, args) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", name, "--k", str(args.k), "--p", str(args.p), "--f", str(args.f),
         "--threads", str(args.threads)],
        capture_output=True, text=True, check=True,
    )
    return int(out.stdout.strip().splitlines()[-1]) / (args.k * args.p * 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--p", type=int, default=1_000_000)
    ap.add_argument("--f", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-combiner memory subprocesses")
    ap.add_argument("--memory-child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.k, args.p, args.f, args.threads)
        return
    torch.set_num_threads(args.threads)
    u = make_updates(args.k, args.p)
    fns = combiners(args.k, args.f)
    for fn in fns.values():  # warm-up
        fn(u)
    times: dict[str, list[float]] = {n: [] for n in fns}
    np_median: list[float] = []
    for rep in range(args.repeats):
        order = list(fns) if rep % 2 == 0 else list(reversed(fns))
        for name in order:
            times[name].append(_time(lambda: fns[name](u)))
        np_median.append(numpy_median_s(u, 1))
    flops_peak = matmul_peak(args.threads)
    bandwidth = read_bandwidth(u)
    np_med = statistics.median(np_median)
    scale = np_med / REFERENCE_S["median"]
    gram_flops = 2 * args.k**2 * args.p
    input_bytes = args.k * args.p * 4
    rows = []
    for name in fns:
        t = statistics.median(times[name])
        if name in GRAM_BOUND:
            share = gram_flops / t / flops_peak
            bound = "2K²P flops / matmul peak"
        else:
            share = input_bytes / t / bandwidth
            bound = "K·P floats read / read bandwidth"
        ref = REFERENCE_S.get(name)
        row = {
            "combiner": name, "seconds": t, "share_of_limit": share, "bound": bound,
            "speedup_vs_reference": ref / t if ref else None,
            "speedup_vs_reference_calibrated": ref * scale / t if ref else None,
            "target": TARGET.get(name),
        }
        if not args.no_memory:
            row["peak_extra_memory_x_input"] = peak_memory(name, args)
        rows.append(row)
    meta = {
        "k": args.k, "p": args.p, "f": args.f, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "numpy": np.__version__,
        "matmul_peak_gflops": flops_peak / 1e9, "read_bandwidth_gbs": bandwidth / 1e9,
        "numpy_median_s": np_med, "machine_scale_vs_reference": scale,
    }
    print(f"K={args.k} P={args.p} f={args.f} threads={args.threads} repeats={args.repeats}  "
          f"matmul peak {flops_peak / 1e9:.0f} GFLOP/s, read bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"numpy median {np_med:.3f} s (machine ≈ {scale:.2f}× the reference's time)")
    print("| combiner | s | share of limit | vs reference | vs reference (calibrated) | target | peak extra memory |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v, suf="×": "–" if v is None else f"{v:.1f}{suf}"  # noqa: E731
        mem = r.get("peak_extra_memory_x_input")
        print(f"| {r['combiner']} | {r['seconds']:.3f} | {100 * r['share_of_limit']:.0f}% ({r['bound']}) | "
              f"{fmt(r['speedup_vs_reference'])} | {fmt(r['speedup_vs_reference_calibrated'])} | "
              f"{fmt(r['target'], '×')} | {'–' if mem is None else f'{mem:.2f}× input'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
