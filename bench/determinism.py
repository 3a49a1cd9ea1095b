"""Same config + seed => same numbers: record a handful of runs, compare two records.

Used before and after a refactor that must not change behaviour (issue #14): run it on
the old tree and on the new one, then compare. Wall-clock fields are left out; a
deployment's clock is wall-clock too, so for it only the model's figures are kept.

    python bench/determinism.py record --out /tmp/before.json
    python bench/determinism.py record --out /tmp/after.json
    python bench/determinism.py compare /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# name -> overrides of the built-in quickstart (digits, MLP, 20 clients)
SIM_CASES: dict[str, list[str]] = {
    "sync": ["schedule.rounds=3"],
    "async": ["method.name=fedasync", "schedule.mode=async", "schedule.concurrency=4", "schedule.max_arrivals=12", "system.profile=lognormal"],
    "buffered": ["schedule.mode=buffered", "schedule.concurrency=6", "schedule.buffer_size=3",
                 "schedule.max_arrivals=12", "system.profile=lognormal"],
    "scaffold": ["method.name=scaffold", "schedule.rounds=3"],
    "fedper": ["method.name=fedper", "eval.personalized=true", "schedule.rounds=3"],
    "median": ["method.name=median", "schedule.rounds=3"],
    "krum_signflip": ["method.name=krum", "attack.kind=sign_flip", "attack.fraction=0.2", "schedule.rounds=2"],
    "fedasmu": ["method.name=fedasmu", "schedule.mode=async", "schedule.concurrency=4", "schedule.max_arrivals=12"],
}
WALL_KEYS = ("wall_time_s",)
DEPLOY_KEYS = ("round", "version", "accuracy", "loss", "client_updates", "dropped_updates", "bytes_up", "bytes_down")


def _records(run_dir: Path, keep: tuple[str, ...] | None = None) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if (k in keep if keep else k not in WALL_KEYS)})
    return out


def record(out: Path, cases: list[str]) -> None:
    from fedweave import run

    result: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases:
            if name == "deploy":
                from fedweave.deploy.loopback import LoopbackRun

                lb = LoopbackRun({"schedule": {"rounds": 2, "clients_per_round": 4},
                                  "data": {"partition": {"num_clients": 4}}}, out=Path(tmp) / name)
                lb.start_clients()
                lb.wait(timeout=300)
                result[name] = _records(Path(tmp) / name, DEPLOY_KEYS)
            else:
                run(None, out=Path(tmp) / name, overrides=SIM_CASES[name])
                result[name] = _records(Path(tmp) / name)
            print(f"{name}: {len(result[name])} records", file=sys.stderr)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))


def compare(a: Path, b: Path) -> int:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for name in sorted(set(ra) | set(rb)):
        same = ra.get(name) == rb.get(name)
        bad += not same
        print(f"{name:16s} {'identical' if same else 'DIFFERENT'}")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--cases", nargs="*", default=[*SIM_CASES, "deploy"])
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args()
    if args.cmd == "record":
        record(args.out, args.cases)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
