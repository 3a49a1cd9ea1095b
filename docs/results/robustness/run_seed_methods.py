"""FRL, FLIP and FAL against FedAvg, and the eavesdropper grid (docs/results/robustness.md).

Usage::

    .venv/bin/python docs/results/robustness/run_seed_methods.py OUT_DIR [PART[:i,j,...] ...] [--seeds 0,1,2]

PART is one of frl, flip, fal, eaves (default: all); ``PART:i,j`` runs only rows i, j of
that part. ``--seeds`` (default: the base config's seed) sets the config's ``seed`` of every
run (training: initialisation, sampling, shuffling and which clients are malicious; the
data split and partition keep ``data.seed``). Each run is a plain ``fedweave.run`` in
``OUT_DIR/<part>/<row>-s<seed>``; its row (method, setting, seed, seconds, summary, last
record) goes into ``OUT_DIR/<part>.json`` as soon as it finishes, replacing an earlier row
with the same method, setting and seed and keeping the others (rows without a seed are seed
0). ``make_tables.py`` turns them into tables (mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

import fedweave
from fedweave.config import deep_merge

HERE = Path(__file__).resolve().parent
BASE = yaml.safe_load((HERE / "attacks-base.yaml").read_text())
FRL_CLIENT = {"client": {"lr": 0.4, "momentum": 0.9, "weight_decay": 1e-4}}

PARTS = {
    "frl": [
        ("fedavg", "none", {}),
        ("fedavg", "sign_flip (-Δ)", {"attack": {"kind": "sign_flip", "fraction": 0.2}}),
        ("fedavg", "minmax (sees benign)", {"attack": {"kind": "minmax", "fraction": 0.2, "sees_benign": True}}),
        ("frl", "none", {"method": {"name": "frl"}, **FRL_CLIENT}),
        ("frl", "reversed ranking (own)", {"method": {"name": "frl"}, **FRL_CLIENT, "attack": {"kind": "sign_flip", "fraction": 0.2}}),
        ("frl", "reversed ranking (sees benign)",
         {"method": {"name": "frl"}, **FRL_CLIENT, "attack": {"kind": "sign_flip", "fraction": 0.2, "sees_benign": True}}),
    ],
    "flip": [
        (m, trig, deep_merge(extra, {"attack": {"kind": "backdoor", "fraction": 0.2, "target": 0, "trigger": t}}))
        for m, extra in (("fedavg", {}), ("fedavg+τ", {"eval": {"reject_threshold": 0.4}}), ("flip", {"method": {"name": "flip"}}))
        for trig, t in (("pixel pattern 4x4", {"size": 4}), ("DBA, 4 pieces", {"kind": "dba", "size": 4, "parts": 4}))
    ] + [("flip", "none", {"method": {"name": "flip"}}), ("fedavg+τ", "none", {"eval": {"reject_threshold": 0.4}}),
         ("fedavg", "none", {})],
    "fal": [
        (m, "none", deep_merge({"method": {"name": m, **({"eps": 0.1, "steps": 5} if m == "fal" else {})}},
                               {"eval": {"robust_accuracy": True, "robust_eps": 0.1, "robust_steps": 10,
                                         "robust_max_examples": 500}}))
        for m in ("fedavg", "fal")
    ],
    "eaves": [
        (f"q={q} p={p}", dp_name, {
            "data": {"partition": {"num_clients": 100}},
            "schedule": {"sampling": "poisson", "sampling_rate": q},
            "eavesdropper": {"probability": p, "sees": sees},
            **({"privacy": {"dp": {"clip": 1.0, "noise_multiplier": sigma}}} if sigma else {}),
        })
        for sees, grid in (
            ("models", [(q, p, dp, s) for q in (0.1, 0.3) for p in (0.1, 0.5, 1.0) for dp, s in (("no DP", None), ("DP", 0.3))]),
            # increments only: the eavesdropper applies what it intercepts to its own initialisation
            ("deltas", [(q, p, "no DP, deltas", None) for q in (0.1, 0.3) for p in (0.5, 1.0)]),
            # DP at about the server accuracy of the runs without DP (σ = 0.01 costs 1-2 points; 0.05 already 4-7)
            ("models", [(q, p, f"DP σ={s}", s) for q in (0.1, 0.3) for p in (0.5, 1.0) for s in (0.01,)]),
        )
        for q, p, dp_name, sigma in grid
    ],
}


def row_key(r: dict) -> tuple:
    return (r["method"], r["setting"], r.get("seed", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="/tmp/robustness-seeds", type=Path)
    ap.add_argument("parts", nargs="*", help="frl, flip, fal, eaves; PART:i,j,... for some rows (default: all parts)")
    ap.add_argument("--seeds", default=str(BASE["seed"]), help="comma-separated config seeds, e.g. 0,1,2")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    out: Path = args.out
    parts = args.parts or list(PARTS)
    # PART:i,j,... runs only those rows of a part (e.g. flip:0,1) and merges them into OUT/PART.json
    selected = {}
    for i, part in enumerate(parts):
        if ":" in part:
            name, idx = part.split(":", 1)
            parts[i], selected[name] = name, {int(x) for x in idx.split(",")}
    for part in parts:
        if part not in PARTS:
            ap.error(f"unknown part {part!r} (one of {', '.join(PARTS)})")
    out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        file = out / f"{part}.json"
        order = {(m, s): i for i, (m, s, _) in enumerate(PARTS[part])}
        rows = {row_key(r): r for r in (json.loads(file.read_text()) if file.exists() else [])}
        for seed in seeds:
            for i, (method, setting, extra) in enumerate(PARTS[part]):
                if part in selected and i not in selected[part]:
                    continue
                cfg = deep_merge(deep_merge(BASE, extra), {"seed": seed})
                t = time.time()
                res = fedweave.run(cfg, out=out / part / f"{i:02d}-s{seed}", overwrite=True)
                row = {"method": method, "setting": setting, "seed": seed, "seconds": time.time() - t,
                       "summary": res.summary, "last": res.history[-1] if res.history else {}}
                rows[row_key(row)] = row
                print(part, method, setting, f"seed {seed}", f"{row['seconds']:.0f} s",
                      {k: v for k, v in row["last"].items() if "accuracy" in k or "success" in k or k == "epsilon"},
                      flush=True)
                ordered = sorted(rows.values(), key=lambda r: (order.get((r["method"], r["setting"]), len(order)),
                                                               r.get("seed", 0)))
                file.write_text(json.dumps(ordered, indent=1, default=str))


if __name__ == "__main__":
    main()
