"""Markdown tables of docs/results/robustness.md from the sweep and run directories.

Usage::

    .venv/bin/python docs/results/robustness/make_tables.py SWEEPS_DIR SEEDS_DIR > tables.md

SWEEPS_DIR holds the ``mnist5k`` and ``digits`` sweeps of ``run-attacks.sh``; SEEDS_DIR the
JSON files of ``run_seed_methods.py``. Also writes ``attacks-<dataset>.csv`` next to this
script (one row per run).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
METHODS = ["fedavg", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "normclip", "fltrust"]
ATTACKS = ["none", "label_flip", "backdoor", "sign_flip", "gaussian", "scaling", "alie", "minmax", "minsum"]


def sweep_rows(path: Path) -> list[dict]:
    rows = []
    for cfg_file in sorted(path.glob("*/seed*/config.yaml")):
        summary_file = cfg_file.parent / "summary.json"
        if not summary_file.exists():
            continue
        cfg = yaml.safe_load(cfg_file.read_text())
        s = json.loads(summary_file.read_text())
        rows.append({
            "method": cfg["method"]["name"], "attack": cfg["attack"]["kind"] or "none", "status": s["status"],
            "final_accuracy": s.get("final_accuracy"), "final_attack_success_rate": s.get("final_attack_success_rate"),
            "wall_time_s": s.get("wall_time_s"),
        })
    return rows


def attack_table(rows: list[dict]) -> str:
    cell = {(r["method"], r["attack"]): r for r in rows}
    head = "| defense | " + " | ".join(ATTACKS) + " |\n|---|" + "---:|" * len(ATTACKS) + "\n"
    lines = []
    for m in METHODS:
        vals = []
        for a in ATTACKS:
            r = cell.get((m, a))
            if r is None:
                vals.append("–")
            elif r["status"] != "completed":
                vals.append(r["status"])
            else:
                v = f"{r['final_accuracy']:.3f}"
                if a == "backdoor" and r["final_attack_success_rate"] is not None:
                    v += f" ({r['final_attack_success_rate']:.2f})"
                vals.append(v)
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines) + "\n"


def seed_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "| method | setting | " + " | ".join(c for c, _ in cols) + " |\n|---|---|" + "---:|" * len(cols) + "\n"
    out = []
    for r in rows:
        last = r["last"]
        vals = []
        for _, key in cols:
            v = last.get(key, r["summary"].get(key))
            vals.append("–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        out.append(f"| {r['method']} | {r['setting']} | " + " | ".join(vals) + " |")
    return head + "\n".join(out) + "\n"


def main() -> None:
    sweeps, seeds = Path(sys.argv[1]), Path(sys.argv[2])
    for ds in ("mnist5k", "digits"):
        rows = sweep_rows(sweeps / ds)
        if not rows:
            continue
        with open(HERE / f"attacks-{ds}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"### {ds}: final accuracy (backdoor: attack success rate in parentheses)\n")
        print(attack_table(rows))
    specs = {
        "frl": [("accuracy", "accuracy"), ("MB up", "bytes_up")],
        "flip": [("accuracy", "accuracy"), ("accuracy with rejection", "accuracy_with_rejection"),
                 ("rejection rate", "rejection_rate"), ("attack success rate", "attack_success_rate"),
                 ("ASR without rejection", "attack_success_rate_no_rejection")],
        "fal": [("clean accuracy", "accuracy"), ("PGD-10 robust accuracy (ε = 0.1)", "robust_accuracy")],
        "eaves": [("server accuracy", "accuracy"), ("eavesdropper accuracy", "eavesdropper_accuracy"),
                  ("intercepted", "eavesdropper_intercepted"), ("ε", "epsilon")],
    }
    for part, cols in specs.items():
        f = seeds / f"{part}.json"
        if f.exists():
            rows = json.loads(f.read_text())
            if part == "frl":
                for r in rows:
                    r["last"]["bytes_up"] = round(r["summary"]["bytes_up"] / 1e6, 2)
            (HERE / f"{part}.json").write_text(json.dumps(
                [{"method": r["method"], "setting": r["setting"], "last": r["last"]} for r in rows], indent=1))
            print(f"### {part}\n")
            print(seed_table(rows, cols))


if __name__ == "__main__":
    main()
