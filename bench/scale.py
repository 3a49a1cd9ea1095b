"""Scale: memory and time per round with many registered clients (fedweave's simulator).

Each case runs in its own subprocess (so its peak RSS is its own) and builds the
experiment with ``fedweave.experiment.build_experiment``, then runs the
``fedweave.sim.engine.Simulator`` itself, so that the client-state store
(``Simulator.store``) can be read afterwards.

Cases (Synthetic(1, 1) of Li et al., ``data.dataset: synthetic``, natural partition,
``client_val_fraction: 0``, 100 clients per round, ``client.local_steps`` 5, batch 10,
SGD lr 0.01, serial executor, 1 torch thread, one evaluation after the last round):

* ``fedavg-1k`` / ``fedavg-10k``: FedAvg, logistic regression (60 features, 10 classes:
  610 parameters), 1,000 / 10,000 registered clients. Shows that memory beyond the data
  does not grow with clients x model size: a stateless method keeps nothing per client
  but its index array, its counters and its device profile.
* ``scaffold-10k`` / ``scaffold-10k-budget``: SCAFFOLD (stateful: a control variate
  c_i per client that has trained) at 10,000 clients, without a budget and with
  ``executor.state_memory_mb`` (default 5 MB). The model is a 60-200-10 MLP (14,210
  parameters, 56.8 KB per c_i), so that the states of a few rounds exceed the budget; with
  logistic regression (2.4 KB per c_i) 5 MB would hold 2,000 states and never spill in a
  short run.

Measured per case:

* ``ru_maxrss`` (peak RSS of the process), and RSS (psutil, if installed; else
  /proc/self/statm) after imports, after building the experiment (data included) and at
  the end of every round (the maximum is reported);
* the data's own size (``x`` and ``y`` tensors) and the growth of RSS during the run
  (peak during the run minus RSS after build): the simulator's own memory;
* seconds per round: median over rounds 2..R-1 (round 1 has first-call costs, round R the
  final evaluation); build time (data generation + partition + model) separately;
* for SCAFFOLD: the store's entries, bytes in memory, spills, loads and the spill
  directory's files and size at the end;
* with ``--tracemalloc`` (default on): a second pass of ``--trace-rounds`` rounds under
  ``tracemalloc`` (Python-heap peak and current; tensor storage is not Python heap and
  is not counted). Its times are not reported as time per round (tracemalloc slows
  Python down).

Usage::

    .venv/bin/python bench/scale.py                       # all four cases, 6 rounds (~2-3 min)
    .venv/bin/python bench/scale.py --cases fedavg-1k,fedavg-10k --rounds 4
    .venv/bin/python bench/scale.py --state-mb 2 --json bench/out/scale.json
    .venv/bin/python bench/scale.py --no-tracemalloc

Never asserts a time; exit status 1 only if a case fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

CASES = {
    # name: (clients, method, model, budget?)
    "fedavg-1k": (1_000, "fedavg", "logistic", False),
    "fedavg-10k": (10_000, "fedavg", "logistic", False),
    "scaffold-10k": (10_000, "scaffold", "mlp200", False),
    "scaffold-10k-budget": (10_000, "scaffold", "mlp200", True),
}
PER_ROUND, LOCAL_STEPS, BATCH, LR = 100, 5, 10, 0.01


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> bool:
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def make_config(case: str, rounds: int, state_mb: float, out: Path, executor: str = "serial") -> dict:
    clients, method, model, budget = CASES[case]
    cfg = {
        "name": f"scale-{case}",
        "seed": 0,
        "data": {"dataset": "synthetic", "seed": 0, "client_val_fraction": 0.0,
                 "synthetic": {"num_clients": clients}, "partition": {"kind": "natural"}},
        "model": {"name": "logistic"} if model == "logistic" else {"name": "mlp", "hidden": [200], "norm": "none"},
        "method": {"name": method},
        "client": {"local_steps": LOCAL_STEPS, "epochs": None, "batch_size": BATCH, "lr": LR, "optimizer": "sgd",
                   "momentum": 0.0},
        "schedule": {"rounds": rounds, "clients_per_round": PER_ROUND, "sampling": "uniform"},
        "eval": {"every": rounds},
        "executor": {"kind": executor if method == "fedavg" else "serial", "threads": 1},
        "output": {"dir": str(out)},
    }
    if budget:
        cfg["executor"]["state_memory_mb"] = state_mb
    return cfg


def _run_sim(exp, run_dir, progress):
    from fedweave.sim.engine import Simulator
    from fedweave.experiment import start_executor

    start_executor(exp)
    sim = Simulator(exp, run_dir, progress)
    try:
        sim.run()
    finally:
        exp.executor.close()
    return sim


def run_case(case: str, rounds: int, state_mb: float, trace: bool, trace_rounds: int, executor: str = "serial") -> dict:
    """One case, in this process (the parent runs each case in a fresh subprocess)."""
    import torch

    from fedweave.config import load_config
    from fedweave.experiment import build_experiment
    from fedweave.rundir import RunDirectory

    torch.set_num_threads(1)
    out: dict = {"case": case, "clients": CASES[case][0], "method": CASES[case][1], "model": CASES[case][2],
                 "budget_mb": state_mb if CASES[case][3] else None, "rounds": rounds}
    gc.collect()
    out["rss_after_imports"] = rss_bytes()
    with tempfile.TemporaryDirectory(prefix="fedweave-scale-") as tmp:
        cfg = load_config(make_config(case, rounds, state_mb, Path(tmp) / "run", executor))
        out["executor"] = cfg.executor.kind
        t = time.perf_counter()
        exp = build_experiment(cfg)
        out["build_s"] = time.perf_counter() - t
        data = exp.data
        out["num_clients"] = data.num_clients
        out["num_params"] = int(exp.spec.num_params)
        out["train_examples"] = int(sum(len(p) for p in data.client_train))
        out["data_bytes"] = int(data.x.numel() * data.x.element_size() + data.y.numel() * data.y.element_size())
        gc.collect()
        out["rss_after_build_untrimmed"] = rss_bytes()
        out["maxrss_after_build"] = maxrss_bytes()
        # glibc keeps memory freed by the data generation (float64 temporaries) in its
        # heap; give it back so that RSS growth during the run is the simulator's own
        out["malloc_trim"] = _malloc_trim()
        out["rss_after_build"] = rss_bytes()

        marks: list[float] = []
        rss_rounds: list[int] = []

        def progress(done, total, record):
            marks.append(time.perf_counter())
            rss_rounds.append(rss_bytes())

        run_dir = RunDirectory(cfg.output.dir)
        run_dir.create(cfg.to_yaml())
        t0 = time.perf_counter()
        sim = _run_sim(exp, run_dir, progress)
        times = [b - a for a, b in zip([t0] + marks[:-1], marks)]
        out["round_s"] = times
        out["round1_s"] = times[0]
        mid = times[1:-1] or times
        out["s_per_round"] = statistics.median(mid)
        out["last_round_s"] = times[-1]
        out["rss_peak_rounds"] = max(rss_rounds)
        out["rss_rounds"] = rss_rounds
        out["maxrss"] = maxrss_bytes()
        out["rss_growth_run"] = max(rss_rounds) - out["rss_after_build"]
        c = sim.committed
        out["final_accuracy"] = float(c.history[-1].get("accuracy", float("nan"))) if c.history else None
        out["client_updates"] = c.totals.client_updates
        if hasattr(exp.executor, "padding_efficiency"):
            out["padding_efficiency"] = exp.executor.padding_efficiency
            out["vec_stats"] = dict(exp.executor.stats)
        st = sim.store
        spill_dir = st.spill_dir
        files = list(spill_dir.glob("client*.pt")) if spill_dir is not None and spill_dir.exists() else []
        out["store"] = {"entries": len(st), "in_memory": len(st._memory), "spilled": len(st._spilled),
                        "memory_bytes": st.memory_bytes, "spills": st.spills, "loads": st.loads,
                        "spill_files": len(files), "spill_bytes": sum(f.stat().st_size for f in files)}

        if trace:
            import tracemalloc

            cfg2 = load_config(make_config(case, trace_rounds, state_mb, Path(tmp) / "trace", executor))
            exp2 = build_experiment(cfg2, data=exp.data)  # same data, not rebuilt
            run_dir2 = RunDirectory(cfg2.output.dir)
            run_dir2.create(cfg2.to_yaml())
            del sim
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            t = time.perf_counter()
            _run_sim(exp2, run_dir2, None)
            cur, peak = tracemalloc.get_traced_memory()
            out["tracemalloc"] = {"rounds": trace_rounds, "peak_bytes": peak - base, "current_bytes": cur - base,
                                  "seconds_traced": time.perf_counter() - t}
            snap = tracemalloc.take_snapshot()
            tracemalloc.stop()
            top = snap.statistics("lineno")[:5]
            out["tracemalloc"]["top"] = [f"{s.traceback[0].filename.split('src/')[-1]}:{s.traceback[0].lineno} "
                                         f"{s.size / 1e6:.2f} MB in {s.count} blocks" for s in top]
    return out


def mb(b) -> str:
    return f"{b / 2**20:,.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per case (default 6; >= 3)")
    ap.add_argument("--state-mb", type=float, default=5.0, help="executor.state_memory_mb of the budget case (default 5)")
    ap.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc pass")
    ap.add_argument("--trace-rounds", type=int, default=3, help="rounds of the tracemalloc pass (default 3)")
    ap.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    ap.add_argument("--executors", default="serial",
                    help="comma-separated executor kinds for the FedAvg cases (e.g. serial,vectorized); "
                         "SCAFFOLD always runs serial (its client customises training)")
    ap.add_argument("--executor", default="serial", help=argparse.SUPPRESS)  # internal, with --case
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = ap.parse_args(argv)
    if args.case:
        res = run_case(args.case, args.rounds, args.state_mb, not args.no_tracemalloc, args.trace_rounds, args.executor)
        print("SCALE-JSON " + json.dumps(res))
        return 0
    if args.rounds < 3:
        ap.error("--rounds must be >= 3")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {list(CASES)}")
    import torch

    import importlib.util

    rss_src = "psutil" if importlib.util.find_spec("psutil") else "/proc/self/statm"
    print(f"machine: {platform.processor() or 'cpu'}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}; RSS from {rss_src}")
    print(f"Synthetic(1,1), natural partition, {PER_ROUND} clients/round, local_steps {LOCAL_STEPS}, batch {BATCH}, "
          f"SGD lr {LR}, serial executor, 1 thread, {args.rounds} rounds; each case in its own process")
    results, failed = [], []
    runs = [(c, e.strip()) for c in cases for e in (args.executors.split(",") if CASES[c][1] == "fedavg" else ["serial"])]
    for case, executor in runs:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--rounds", str(args.rounds),
               "--state-mb", str(args.state_mb), "--trace-rounds", str(args.trace_rounds), "--executor", executor]
        if args.no_tracemalloc:
            cmd.append("--no-tracemalloc")
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("SCALE-JSON ")), None)
        if p.returncode or line is None:
            print(f"  {case}: FAILED (exit {p.returncode})\n{p.stderr[-3000:]}")
            failed.append(case)
            continue
        res = json.loads(line[len("SCALE-JSON "):])
        res["process_s"] = time.perf_counter() - t
        results.append(res)
        print(f"  {case} ({executor}): {res['s_per_round']:.3f} s/round, peak RSS {mb(res['maxrss'])} MB, "
              f"{res['process_s']:.1f}s in all  (load {os.getloadavg()[0]:.2f})")

    print("\nmemory (MiB) and time; 'RSS build' = after building data and experiment and malloc_trim; 'run growth' = "
          "max RSS at round ends - RSS build (the simulator's own memory); 'peak RSS' = ru_maxrss (includes the data "
          "generation's float64 temporaries):")
    hdr = (f"  {'case':<20} {'executor':<10} {'clients':>7} {'params':>7} {'examples':>9} {'data':>7} {'RSS build':>9} {'peak RSS':>8} "
           f"{'run growth':>10} {'tracemalloc peak':>16} {'build s':>7} {'s/round':>7} {'round 1':>7} {'last':>6}")
    print(hdr)
    for r in results:
        tm = r.get("tracemalloc")
        print(f"  {r['case']:<20} {r['executor']:<10} {r['num_clients']:>7,} {r['num_params']:>7,} {r['train_examples']:>9,} "
              f"{mb(r['data_bytes']):>7} {mb(r['rss_after_build']):>9} {mb(r['maxrss']):>8} "
              f"{mb(r['rss_growth_run']):>10} {(mb(tm['peak_bytes']) if tm else '-'):>16} {r['build_s']:>7.2f} "
              f"{r['s_per_round']:>7.3f} {r['round1_s']:>7.3f} {r['last_round_s']:>6.3f}")
    sc = [r for r in results if r["method"] == "scaffold"]
    if sc:
        print("\nSCAFFOLD client-state store at the end:")
        print(f"  {'case':<20} {'budget MB':>9} {'states':>6} {'in memory':>9} {'MiB in mem':>10} {'spilled':>7} "
              f"{'spills':>6} {'loads':>5} {'files':>5} {'MiB on disk':>11}")
        for r in sc:
            s = r["store"]
            print(f"  {r['case']:<20} {str(r['budget_mb'] or '-'):>9} {s['entries']:>6} {s['in_memory']:>9} "
                  f"{mb(s['memory_bytes']):>10} {s['spilled']:>7} {s['spills']:>6} {s['loads']:>5} "
                  f"{s['spill_files']:>5} {mb(s['spill_bytes']):>11}")
    for r in results:
        if "padding_efficiency" in r:
            print(f"  {r['case']} (vectorized): padding efficiency {r['padding_efficiency']:.3f}, "
                  f"{r['vec_stats']['cohorts']} cohorts in {r['rounds']} rounds")
    print(f"  RSS after imports: {mb(results[0]['rss_after_imports']) if results else '-'} MiB; RSS after build before "
          "malloc_trim: " + ", ".join(f"{r['case']} {mb(r['rss_after_build_untrimmed'])}" for r in results))
    for r in results:
        if r.get("tracemalloc"):
            print(f"  tracemalloc top lines, {r['case']}: " + "; ".join(r["tracemalloc"]["top"][:3]))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "failed": failed,
                                               "command": " ".join(sys.argv)}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
