"""FRL, FLIP and FAL against FedAvg, and the eavesdropper grid (docs/results/robustness.md).

Usage::

    .venv/bin/python docs/results/robustness/run_seed_methods.py OUT_DIR [frl flip fal eaves]

Each run is a plain ``fedweave.run``; the summaries are collected into
``OUT_DIR/<part>.json`` and turned into tables by ``make_tables.py``.
"""

from __future__ import annotations

import json
import sys
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


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/robustness-seeds")
    parts = sys.argv[2:] or list(PARTS)
    # PART:i,j,... runs only those rows of a part (e.g. flip:0,1) and merges them into OUT/PART.json
    selected = {}
    for i, part in enumerate(parts):
        if ":" in part:
            name, idx = part.split(":", 1)
            parts[i], selected[name] = name, {int(x) for x in idx.split(",")}
    out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        old = json.loads((out / f"{part}.json").read_text()) if (out / f"{part}.json").exists() else []
        rows = []
        for i, (method, setting, extra) in enumerate(PARTS[part]):
            if part in selected and i not in selected[part]:
                keep = [r for r in old if r["method"] == method and r["setting"] == setting]
                rows.extend(keep[:1])
                continue
            cfg = deep_merge(BASE, extra)
            t = time.time()
            res = fedweave.run(cfg, out=out / part / f"{i:02d}")
            rows.append({"method": method, "setting": setting, "seconds": time.time() - t,
                         "summary": res.summary, "last": res.history[-1] if res.history else {}})
            print(part, method, setting, {k: v for k, v in rows[-1]["last"].items()
                                          if "accuracy" in k or "success" in k or k == "epsilon"}, flush=True)
        (out / f"{part}.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
