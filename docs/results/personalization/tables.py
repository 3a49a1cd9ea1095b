"""Tables and plot of docs/results/personalization.md from finished sweep directories.

    python docs/results/personalization/tables.py /tmp/pers/main /tmp/pers/fedins /tmp/pers/fedavg-ssf

Reads every run's config.yaml, metrics.jsonl and summary.json below the given sweep
directories and writes, next to this file: ``results.csv`` (one row per run), ``tables.md``
(mean ± sample std over seeds per dataset and method) and ``personalized-vs-round.png``.
"Final" figures are the mean of the last ``eval.final_window`` evaluations, as the summary's
``final_accuracy`` (the summary's ``personalized_acc_*`` are those of the last evaluation).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ORDER = ["fedavg", "ditto", "fedper", "fedbn", "pgfed", "pgfedmo", "fsar"]


def label(cfg: dict) -> str:
    name = cfg["method"]["name"]
    if cfg["model"]["name"] == "ssf_pool":
        kw = cfg["model"]["kwargs"]
        return f"{name} (ssf_pool P={kw['pool_size']}, k={kw['top_k']})"
    return name


def runs(dirs: list[Path]) -> list[dict]:
    rows = []
    for d in dirs:
        for summary_path in sorted(d.glob("*/seed*/summary.json")):
            run = summary_path.parent
            summary = json.loads(summary_path.read_text())
            if summary.get("status") != "completed":
                continue
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            k = cfg["eval"]["final_window"]
            last = hist[-k:]
            rows.append({
                "dataset": cfg["data"]["dataset"], "method": label(cfg), "seed": cfg["seed"],
                "global_acc_final": float(np.mean([r["accuracy"] for r in last])),
                "personalized_acc_final": float(np.mean([r["personalized_acc_mean"] for r in last])),
                "personalized_acc_best": float(max(r["personalized_acc_mean"] for r in hist)),
                "personalized_worst10_final": float(np.mean([r["personalized_acc_worst10"] for r in last])),
                "mb_up_down": (summary["bytes_up"] + summary["bytes_down"]) / 1e6,
                "wall_time_s": summary["wall_time_s"],
                "pretrain_test_accuracy": summary.get("pretrain_test_accuracy"),
                "curve": [(r["round"], r["personalized_acc_mean"]) for r in hist],
                "run": str(run),
            })
    return rows


def cell(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def table(rows: list[dict], dataset: str, methods: list[str], extra: bool = False) -> list[str]:
    head = "| method | seeds | personalized acc (final) | personalized acc (best) | worst-10% clients (final) | global test acc (final) | MB up+down |"
    lines = [head, "|" + "---|" * 2 + "---:|" * 5]
    if extra:
        lines[0] += " pretrained backbone + its head, test acc |"
        lines[1] += "---:|"
    by = defaultdict(list)
    for r in rows:
        if r["dataset"] == dataset:
            by[r["method"]].append(r)
    for m in methods:
        rs = by.get(m)
        if not rs:
            continue
        line = (f"| {m} | {len(rs)} | {cell([r['personalized_acc_final'] for r in rs])} | "
                f"{cell([r['personalized_acc_best'] for r in rs])} | {cell([r['personalized_worst10_final'] for r in rs])} | "
                f"{cell([r['global_acc_final'] for r in rs])} | {cell([r['mb_up_down'] for r in rs], 1)} |")
        if extra:
            line += f" {cell([r['pretrain_test_accuracy'] for r in rs])} |"
        lines.append(line)
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = ["mnist5k", "mnist1d"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, ds in zip(axes, datasets):
        for m in ORDER:
            rs = [r for r in rows if r["dataset"] == ds and r["method"] == m]
            if not rs:
                continue
            rounds = [x for x, _ in rs[0]["curve"]]
            mean = np.mean([[y for _, y in r["curve"]] for r in rs], axis=0)
            ax.plot(rounds, mean, marker="o", ms=3, label=m)
        ax.set_title(f"{ds}: Dirichlet 0.3, 25 clients (mean of 3 seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel("personalized accuracy (mean over clients)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    rows = runs([Path(a) for a in argv])
    fields = [k for k in rows[0] if k not in ("curve",)]
    with open(HERE / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["dataset"], r["method"], r["seed"])):
            w.writerow({k: (Path(r[k]).relative_to(Path(r[k]).parents[2]) if k == "run" else r[k]) for k in fields})
    out = []
    fedins_methods = sorted({r["method"] for r in rows if "ssf_pool" in r["method"]})
    for ds in ("mnist5k", "mnist1d"):
        out += [f"### {ds}: personalization", ""] + table(rows, ds, ORDER) + [""]
        if fedins_methods:
            out += [f"### {ds}: FedIns vs FedAvg on the frozen backbone", ""] + table(rows, ds, fedins_methods, extra=True) + [""]
    (HERE / "tables.md").write_text("\n".join(out))
    plot(rows, HERE / "personalized-vs-round.png")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
