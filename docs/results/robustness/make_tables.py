"""Markdown tables of docs/results/robustness.md from the sweep and run directories.

Usage::

    .venv/bin/python docs/results/robustness/make_tables.py SWEEPS_DIR [SWEEPS_DIR ...] SEEDS_DIR > tables.md

Each SWEEPS_DIR holds ``mnist5k`` and/or ``digits`` sweeps of ``run-attacks.sh``; SEEDS_DIR
the JSON files of ``run_seed_methods.py``. Results are merged into the files next to this script, which are
also read back, so a partial rerun only replaces its own rows: ``attacks-<dataset>.csv`` (one
row per run, keyed by method, attack and seed) and ``<part>.json`` (one row per run, keyed by
method, setting and seed; a row without a seed is seed 0).

Every cell with runs at more than one seed is ``mean ± sd`` (sample standard deviation,
n − 1) over its seeds; the tables say n. The ``paired differences`` tables subtract, seed by
seed, the runs that share a seed (same initialisation, sampling and malicious clients), and
give the two-sided p of a one-sample t-test of mean 0 over those differences (scipy).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
METHODS = ["fedavg", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "normclip", "fltrust"]
# minsum_max: min-sum with attack.minsum_bound: max (the largest benign score; min, the official bound, is the default)
ATTACKS = ["none", "label_flip", "backdoor", "sign_flip", "gaussian", "scaling", "alie", "minmax", "minsum", "minsum_max"]
PAIRED = {"protection"}  # columns that are differences within a run: mean ± sd (p of a t-test of mean 0)
CSV_FIELDS = ["method", "attack", "seed", "status", "final_accuracy", "final_attack_success_rate", "wall_time_s"]


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:.3g}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def mean_sd(values: list) -> str:
    """``v`` for one value (or identical ones), else ``mean ± sd``; "–" when there is none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1 or all(v == values[0] for v in values):
        return fmt(values[0])
    m, sd = statistics.fmean(values), statistics.stdev(values)
    if abs(m) >= 1000:
        return f"{m:.3g} ± {sd:.2g}"
    if all(isinstance(v, int) for v in values):
        return f"{m:.1f} ± {sd:.1f}"
    return f"{m:.3f} ± {sd:.3f}"


def diff_cell(diffs: list) -> str:
    """Paired differences as ``mean ± sd (p …)``: two-sided one-sample t-test of mean 0."""
    from scipy.stats import ttest_1samp

    diffs = [d for d in diffs if d is not None]
    cell = mean_sd(diffs)
    if len(diffs) < 2 or cell == "–":
        return cell
    if statistics.stdev(diffs) == 0:
        return cell if diffs[0] == 0 else cell + " (no spread)"
    p = ttest_1samp(diffs, 0.0).pvalue
    return cell + (f" (p {p:.3f})" if p >= 0.001 else " (p < 0.001)")


def sweep_rows(path: Path) -> list[dict]:
    rows = []
    for cfg_file in sorted(path.glob("*/seed*/config.yaml")):
        summary_file = cfg_file.parent / "summary.json"
        if not summary_file.exists():
            continue
        cfg = yaml.safe_load(cfg_file.read_text())
        s = json.loads(summary_file.read_text())
        attack = cfg["attack"]["kind"] or "none"
        if attack == "minsum" and cfg["attack"].get("minsum_bound") == "max":
            attack = "minsum_max"
        rows.append({
            "method": cfg["method"]["name"], "attack": attack, "seed": cfg["seed"],
            "status": s["status"], "final_accuracy": s.get("final_accuracy"),
            "final_attack_success_rate": s.get("final_attack_success_rate"), "wall_time_s": s.get("wall_time_s"),
        })
    return rows


def csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            r["seed"] = int(r.get("seed") or 0)
            for k in ("final_accuracy", "final_attack_success_rate", "wall_time_s"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else None
            rows.append(r)
    return rows


def attack_table(rows: list[dict]) -> str:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["attack"]), []).append(r)
    ns = {a: sorted({len(cells.get((m, a), [])) for m in METHODS}) for a in ATTACKS}
    names = [a if ns[a] == [1] else f"{a} (n = {'/'.join(map(str, ns[a]))})" for a in ATTACKS]
    head = "| defense | " + " | ".join(names) + " |\n|---|" + "---:|" * len(ATTACKS) + "\n"
    lines = []
    for m in METHODS:
        vals = []
        for a in ATTACKS:
            runs = cells.get((m, a), [])
            bad = [r["status"] for r in runs if r["status"] != "completed"]
            if not runs:
                vals.append("–")
            elif bad:
                vals.append("/".join(bad))
            else:
                v = mean_sd([r["final_accuracy"] for r in runs])
                if a == "backdoor" and runs[0]["final_attack_success_rate"] is not None:
                    v += f" ({mean_sd([r['final_attack_success_rate'] for r in runs])})"
                vals.append(v)
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return head + "\n".join(lines) + "\n"


def paired_attack_table(rows: list[dict], base: str = "none", attacks: list[str] | None = None) -> str:
    """Seed by seed: accuracy under each attack minus accuracy under ``base``, per defense."""
    acc = {(r["method"], r["attack"], r["seed"]): r["final_accuracy"] for r in rows if r["status"] == "completed"}
    attacks = attacks or [a for a in ATTACKS if a != base]
    out = ["| defense | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for m in METHODS:
        vals = []
        for a in attacks:
            seeds = sorted(s for (mm, aa, s) in acc if mm == m and aa == a and (m, base, s) in acc)
            vals.append(diff_cell([acc[(m, a, s)] - acc[(m, base, s)] for s in seeds]))
        out.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def versus_fedavg_table(rows: list[dict]) -> str:
    """Seed by seed: each defense minus FedAvg, clean accuracy (no attack) and backdoor success rate."""
    val = {(r["method"], r["attack"], r["seed"]): r for r in rows if r["status"] == "completed"}
    cols = [("accuracy, no attack", "none", "final_accuracy"),
            ("backdoor success rate", "backdoor", "final_attack_success_rate")]
    out = ["| defense − fedavg | " + " | ".join(c for c, _, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in METHODS[1:]:
        vals = []
        for _, a, k in cols:
            seeds = sorted(s for (mm, aa, s) in val if mm == m and aa == a and ("fedavg", a, s) in val)
            vals.append(diff_cell([val[(m, a, s)][k] - val[("fedavg", a, s)][k] for s in seeds
                                   if val[(m, a, s)][k] is not None and val[("fedavg", a, s)][k] is not None]))
        out.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(out) + "\n"


def key(r: dict) -> tuple:
    return (r["method"], r["setting"], r.get("seed", 0))


def seed_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    head = ("| method | setting | seeds | " + " | ".join(c for c, _ in cols) + " |\n|---|---|---|"
            + "---:|" * len(cols) + "\n")
    out = []
    for (method, setting), runs in groups.items():
        vals = [(diff_cell if k in PAIRED else mean_sd)([r["last"].get(k, r.get("summary", {}).get(k)) for r in runs])
                for _, k in cols]
        seeds = ",".join(str(r.get("seed", 0)) for r in runs)
        out.append(f"| {method} | {setting} | {seeds} | " + " | ".join(vals) + " |")
    return head + "\n".join(out) + "\n"


def paired_table(rows: list[dict], pairs: list[tuple[tuple, tuple, str]], cols: list[tuple[str, str]]) -> str:
    """Seed by seed differences A − B of the columns, for each (A, B, label)."""
    by = {key(r): r["last"] for r in rows}
    head = ("| difference | seeds | " + " | ".join(c for c, _ in cols) + " |\n|---|---|"
            + "---:|" * len(cols) + "\n")
    out = []
    for a, b, label in pairs:
        seeds = sorted(s for (m, st, s) in by if (m, st) == a and (*b, s) in by)
        vals = []
        for _, k in cols:
            d = [by[(*a, s)][k] - by[(*b, s)][k] for s in seeds
                 if by[(*a, s)].get(k) is not None and by[(*b, s)].get(k) is not None]
            vals.append(diff_cell(d))
        out.append(f"| {label} | {','.join(map(str, seeds))} | " + " | ".join(vals) + " |")
    return head + "\n".join(out) + "\n"


def main() -> None:
    *sweep_dirs, seeds_dir = map(Path, sys.argv[1:])
    for ds in ("mnist5k", "digits"):
        merged = {(r["method"], r["attack"], r["seed"]): r for r in csv_rows(HERE / f"attacks-{ds}.csv")}
        for d in sweep_dirs:
            merged.update({(r["method"], r["attack"], r["seed"]): r for r in sweep_rows(d / ds)})
        rows = sorted(merged.values(), key=lambda r: (r["method"], r["attack"], r["seed"]))
        if not rows:
            continue
        with open(HERE / f"attacks-{ds}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        print(f"### {ds}: final accuracy (backdoor: attack success rate in parentheses)\n")
        print(attack_table(rows))
        print(f"### {ds}: accuracy under each attack minus without attack (paired by seed; p of the paired t-test)\n")
        print(paired_attack_table(rows))
        print(f"### {ds}: min-sum, official bound (min) minus the largest benign score (max), paired by seed\n")
        print(paired_attack_table(rows, "minsum_max", ["minsum"]))
        print(f"### {ds}: each defense minus FedAvg (paired by seed)\n")
        print(versus_fedavg_table(rows))
    specs = {
        "frl": [("accuracy", "accuracy"), ("MB up", "bytes_up")],
        "flip": [("accuracy", "accuracy"), ("accuracy with rejection", "accuracy_with_rejection"),
                 ("rejection rate", "rejection_rate"), ("attack success rate", "attack_success_rate"),
                 ("ASR without rejection", "attack_success_rate_no_rejection")],
        "fal": [("clean accuracy", "accuracy"), ("PGD-10 robust accuracy (ε = 0.1)", "robust_accuracy")],
        "eaves": [("server accuracy", "accuracy"), ("eavesdropper accuracy", "eavesdropper_accuracy"),
                  ("server − eavesdropper", "protection"), ("intercepted", "eavesdropper_intercepted"),
                  ("ε", "epsilon")],
    }
    for part, cols in specs.items():
        committed = HERE / f"{part}.json"
        order = [(r["method"], r["setting"]) for r in json.loads(committed.read_text())] if committed.exists() else []
        merged = {key(r): r for r in (json.loads(committed.read_text()) if committed.exists() else [])}
        f = seeds_dir / f"{part}.json"
        for r in json.loads(f.read_text()) if f.exists() else []:
            if part == "frl":
                r["last"]["bytes_up"] = round(r["summary"]["bytes_up"] / 1e6, 2)
            merged[key(r)] = {"method": r["method"], "setting": r["setting"], "seed": r.get("seed", 0),
                              "seconds": r.get("seconds"), "last": r["last"]}
            if (r["method"], r["setting"]) not in order:
                order.append((r["method"], r["setting"]))
        if not merged:
            continue
        rows = sorted(merged.values(), key=lambda r: (order.index((r["method"], r["setting"])), r.get("seed", 0)))
        committed.write_text(json.dumps(rows, indent=1))
        for r in rows:
            if part == "eaves":
                last = r["last"]
                last["protection"] = last["accuracy"] - last["eavesdropper_accuracy"]
        print(f"### {part}\n")
        print(seed_table(rows, cols))
        if part == "frl":
            pairs = [(("frl", "none"), ("fedavg", "none"), "frl − fedavg, no attack")]
            pairs += [(("fedavg", st), ("fedavg", "none"), f"fedavg: {st} − none")
                      for st in ("sign_flip (-Δ)", "minmax (sees benign)")]
            pairs += [(("frl", st), ("frl", "none"), f"frl: {st} − none")
                      for st in ("reversed ranking (own)", "reversed ranking (sees benign)")]
            print("### frl: paired differences (same seed)\n")
            print(paired_table(rows, pairs, cols[:1]))
        if part == "fal":
            print("### fal: paired differences (same seed)\n")
            print(paired_table(rows, [(("fal", "none"), ("fedavg", "none"), "fal − fedavg")], cols))
        if part == "flip":
            pairs = [(("flip", s), ("fedavg+τ", s), f"flip − fedavg+τ, {s}")
                     for s in ("pixel pattern 4x4", "DBA, 4 pieces", "none")]
            pairs += [(("fedavg+τ", s), ("fedavg", s), f"fedavg+τ − fedavg, {s}")
                      for s in ("pixel pattern 4x4", "DBA, 4 pieces")]
            print("### flip: paired differences (same seed)\n")
            print(paired_table(rows, pairs, cols[:2] + cols[2:4] + [("ASR without rejection",
                                                                       "attack_success_rate_no_rejection")]))
        if part == "eaves":
            pairs = [((f"q={q} p={p}", "no DP, deltas"), (f"q={q} p={p}", "no DP"),
                      f"q={q} p={p}: deltas − models (no DP)") for q in (0.1, 0.3) for p in (0.5, 1.0)]
            pairs += [((f"q={q} p={p}", "DP σ=0.01"), (f"q={q} p={p}", "no DP"),
                       f"q={q} p={p}: DP σ=0.01 − no DP") for q in (0.1, 0.3) for p in (0.5, 1.0)]
            pairs += [((f"q={q} p={p}", "DP"), (f"q={q} p={p}", "no DP"),
                       f"q={q} p={p}: DP σ=0.3 − no DP") for q in (0.1, 0.3) for p in (0.1, 0.5, 1.0)]
            print("### eaves: paired differences (same seed)\n")
            print(paired_table(rows, pairs, cols[:3]))


if __name__ == "__main__":
    main()
