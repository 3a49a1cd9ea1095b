"""Throughput and memory of the asynchronous simulator with many concurrent devices.

Workload: Synthetic(1, 1) with a natural split over ``--clients`` devices (default 2,000),
multinomial logistic regression (60 features, 10 classes: 610 parameters), one local step
of batch 10 per job, FedAsync (``schedule.mode: async``) with ``--concurrency`` devices
busy at once (default 1,000), a ``tiers`` device profile (30% 10x slower), until
``--arrivals`` uploads (default 20,000). Evaluation every ``--arrivals / 4`` versions.

What is measured, in one process:

* ``events``: events popped from the engine's queue (``compute_done`` and ``arrival`` per
  job, plus ``wake``/``failed`` if any), counted by wrapping ``EventQueue.pop``;
* ``train s``: time inside ``executor.collect`` (the client's local training: the work
  the simulator exists to run), measured by wrapping ``SerialExecutor.collect``;
* ``eval s``: time inside ``RoundLedger.evaluate``;
* ``engine s`` = the engine's own ``summary["wall_time_s"]`` − train − eval: everything
  else (dispatch, the idle scan, scheduling, the strategy's merge, bookkeeping);
* ``overhead per event`` = engine s / events (target < 1 ms) and the events per second.

Memory: RSS (``/proc/self/statm``) and, in a second run with ``--tracemalloc`` (slower),
the Python heap traced by ``tracemalloc``, at each evaluation (every quarter of the
arrivals: 5k, 10k, 15k, 20k with the defaults). Memory must not grow with the number of
finished events: the engine keeps only in-flight jobs, counters and the evaluation
history.

``--profile N`` additionally runs N arrivals under cProfile and prints the engine
functions by own time.

Usage::

    .venv/bin/python bench/async_engine.py                     # timing + RSS
    .venv/bin/python bench/async_engine.py --tracemalloc       # + heap snapshots (slower)
    .venv/bin/python bench/async_engine.py --arrivals 5000 --profile 5000
    .venv/bin/python bench/async_engine.py --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import fedweave  # noqa: E402
from fedweave.sim import ledger as ledger_mod  # noqa: E402
from fedweave.sim.events import EventQueue  # noqa: E402
from fedweave.sim.executors import SerialExecutor  # noqa: E402


def config(clients: int, concurrency: int, arrivals: int, out: str) -> dict:
    return {
        "name": "bench-async",
        "seed": 0,
        "data": {"dataset": "synthetic", "partition": {"kind": "natural"}, "client_val_fraction": 0.0,
                 "synthetic": {"alpha": 1.0, "beta": 1.0, "num_clients": clients}},
        "model": {"name": "logistic"},
        "method": {"name": "fedasync", "alpha": 0.6},
        "client": {"local_steps": 1, "epochs": None, "batch_size": 10, "lr": 0.05},
        "schedule": {"mode": "async", "concurrency": concurrency, "max_arrivals": arrivals},
        "system": {"profile": "tiers"},
        "eval": {"every": max(arrivals // 4, 1)},
        "output": {"dir": out},
        "executor": {"threads": 1},
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timers:
    """Class-level wrappers (restored by ``close``) that time training and evaluation and count events."""

    def __init__(self):
        self.train_s = self.eval_s = 0.0
        self.events = 0
        self.collects = 0
        self._orig = (SerialExecutor.collect, ledger_mod.RoundLedger.evaluate, EventQueue.pop)
        collect, evaluate, pop = self._orig
        timers = self

        def timed_collect(ex, handle):
            t = time.perf_counter()
            try:
                return collect(ex, handle)
            finally:
                timers.train_s += time.perf_counter() - t
                timers.collects += 1

        def timed_evaluate(sim, *a, **k):
            t = time.perf_counter()
            try:
                return evaluate(sim, *a, **k)
            finally:
                timers.eval_s += time.perf_counter() - t

        def counted_pop(q):
            timers.events += 1
            return pop(q)

        SerialExecutor.collect = timed_collect
        ledger_mod.RoundLedger.evaluate = timed_evaluate
        EventQueue.pop = counted_pop

    def close(self):
        SerialExecutor.collect, ledger_mod.RoundLedger.evaluate, EventQueue.pop = self._orig


def run_once(args, trace: bool) -> dict:
    torch.set_num_threads(1)
    marks: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args.clients, args.concurrency, args.arrivals, str(Path(tmp) / "run"))
        timers = Timers()
        if trace:
            tracemalloc.start()

        def progress(done, total, record):
            mark = {"arrivals": done, "rss_mb": round(rss_mb(), 1), "events": timers.events}
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                mark["traced_mb"] = round(current / 2**20, 2)
            marks.append(mark)

        t0 = time.perf_counter()
        try:
            res = fedweave.run(cfg, progress=progress)
        finally:
            timers.close()
            if trace:
                tracemalloc.stop()
        total_s = time.perf_counter() - t0
    s = res.summary
    engine_s = s["wall_time_s"] - timers.train_s - timers.eval_s
    return {
        "clients": args.clients, "concurrency": args.concurrency, "arrivals": args.arrivals,
        "tracemalloc": trace, "run_s": round(total_s, 2), "engine_wall_s": round(s["wall_time_s"], 2),
        "train_s": round(timers.train_s, 2), "eval_s": round(timers.eval_s, 2), "engine_s": round(engine_s, 2),
        "events": timers.events, "jobs_trained": timers.collects,
        "events_per_s": round(timers.events / s["wall_time_s"], 1),
        "overhead_ms_per_event": round(1e3 * engine_s / max(timers.events, 1), 4),
        "overhead_ms_per_arrival": round(1e3 * engine_s / args.arrivals, 4),
        "final_accuracy": s.get("final_accuracy"), "memory": marks,
    }


def profile(args) -> str:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        a = argparse.Namespace(**{**vars(args), "arrivals": args.profile})
        cfg = config(a.clients, a.concurrency, a.arrivals, str(Path(tmp) / "run"))
        prof = cProfile.Profile()
        prof.enable()
        fedweave.run(cfg)
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--arrivals", type=int, default=20000)
    ap.add_argument("--tracemalloc", action="store_true", help="also run once under tracemalloc (heap snapshots)")
    ap.add_argument("--profile", type=int, default=0, help="arrivals of an extra cProfile run (0: none)")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()

    results = [run_once(args, trace=False)]
    if args.tracemalloc:
        results.append(run_once(args, trace=True))
    for r in results:
        print(f"\n== {r['clients']} devices, {r['concurrency']} concurrent, {r['arrivals']} arrivals"
              f"{' (under tracemalloc)' if r['tracemalloc'] else ''}")
        print(f"engine wall {r['engine_wall_s']} s = train {r['train_s']} s + eval {r['eval_s']} s + engine {r['engine_s']} s")
        print(f"events {r['events']}  ({r['events_per_s']} events/s overall)")
        print(f"engine overhead: {r['overhead_ms_per_event']} ms per event, {r['overhead_ms_per_arrival']} ms per arrival")
        print("memory at evaluations: " + ", ".join(
            f"{m['arrivals']} arrivals: RSS {m['rss_mb']} MB" + (f", traced {m['traced_mb']} MB" if "traced_mb" in m else "")
            for m in r["memory"]))
    prof_text = profile(args) if args.profile else None
    if prof_text:
        print(f"\n== cProfile, {args.profile} arrivals (own time)\n{prof_text}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "profile": prof_text}, indent=2))


if __name__ == "__main__":
    main()
