"""Reproduce the figures of docs/results/seed-tasks.md: FSAR on skeletons, FedVSR on video
SR, pLoRA on a small vision-language task, three training seeds each (data fixed).

    PYTHONPATH=src python docs/results/seed-tasks/run.py            # about 15-20 min on 2 busy cores
    PYTHONPATH=src python docs/results/seed-tasks/run.py --part fsar
    PYTHONPATH=src python docs/results/seed-tasks/run.py --part fedvsr-rnn --seeds 0   # one seed only

Run directories go to --work (default /tmp/fedweave-seed-tasks); the per-run figures to
docs/results/seed-tasks/results.json, and a summary table (mean ± std over seeds) is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import fedweave
from fedweave.tasks.vision_language import pretrain_vlm

SEEDS = (0, 1, 2)
HERE = Path(__file__).resolve().parent


def skeleton(method: dict, seed: int, dataset: str = "skeleton") -> dict:
    return {
        "name": "seed-fsar", "seed": seed,
        "data": {"dataset": dataset, "partition": {"kind": "natural", "num_clients": 6}, "client_val_fraction": 0.2},
        "model": {"name": "stgcn", "width": 8},
        "client": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "optimizer": "adam", "mu": 0.01},
        "schedule": {"rounds": 15, "clients_per_round": 6},
        "eval": {"personalized": True},
        "method": method,
    }


FSAR_RUNS = {
    "fedavg": {"name": "fedavg"},
    "fedprox (mu 0.01)": {"name": "fedprox"},
    "fsar general (personal head + distil)": {"name": "fsar"},
    "fsar_gcn ATS only (mkd_depth 0)": {"name": "fsar_gcn", "mkd_depth": 0},
    "fsar_gcn ATS + MKD (official code)": {"name": "fsar_gcn"},
    "fsar_gcn ATS + MKD, teacher on (A+S)M (ours)": {"name": "fsar_gcn", "teacher_topology": "full"},
    "fsar_gcn ATS + MKD, mkd_depth 1": {"name": "fsar_gcn", "mkd_depth": 1},
}
# the control for "heterogeneous topologies make federated training unstable": the same
# federation with one layout (NTU25) on every client
HOMOGENEOUS_RUNS = {
    "fedavg, all clients 25-joint": {"name": "fedavg"},
    "fsar_gcn ATS only, all clients 25-joint": {"name": "fsar_gcn", "mkd_depth": 0},
    "fsar_gcn ATS + MKD, all clients 25-joint": {"name": "fsar_gcn"},
}


def video(method: dict, seed: int, dataset: str = "clips:5", clients: int = 6, model: str = "vsrnet",
          model_kwargs: dict | None = None, rounds: int = 15) -> dict:
    return {
        "name": "seed-fedvsr", "seed": seed, "task": {"kind": "video_sr"},
        "data": {"dataset": dataset, "partition": {"kind": "dirichlet", "alpha": 0.5, "num_clients": clients}},
        "model": {"name": model, "width": 16, **({"kwargs": model_kwargs} if model_kwargs else {})},
        "client": {"epochs": 1, "batch_size": 16, "lr": 2e-3, "optimizer": "adam", "mu": 0.01},
        "schedule": {"rounds": rounds, "clients_per_round": clients},
        "method": method,
    }


VSR_RUNS = {
    "fedavg (5 frames)": ({"name": "fedavg"}, "clips:5"),
    "fedprox (5 frames)": ({"name": "fedprox"}, "clips:5"),
    "fedvsr (5 frames)": ({"name": "fedvsr"}, "clips:5"),
    "fedvsr weighting only, hf 0 (5 frames)": ({"name": "fedvsr", "hf_weight": 0.0}, "clips:5"),
    "fedavg (1 frame: single image)": ({"name": "fedavg"}, "clips:1"),
    "fedvsr (1 frame: single image)": ({"name": "fedvsr"}, "clips:1"),
}
# the control for "does the video model use its neighbouring frames at this budget at all":
# one client holding all the training data (centralised training, same epochs)
CENTRAL_RUNS = {
    "centralised, 5 frames": ({"name": "fedavg"}, "clips:5"),
    "centralised, 1 frame": ({"name": "fedavg"}, "clips:1"),
}
# the same federation and controls with the recurrent model vsrrnn (BasicVSR-style:
# bidirectional propagation, features aligned by a flow net learned from scratch): label ->
# (method, dataset, options of video()); clients 1 is centralised; "no alignment" is the
# ablation model.kwargs.align: false (the same recurrence, features passed on unwarped);
# "60 epochs" asks whether a longer centralised budget lets either model use the neighbours
FEDAVG, RNN = {"name": "fedavg"}, {"model": "vsrrnn"}
RNN_RUNS = {
    "vsrrnn fedavg (5 frames)": (FEDAVG, "clips:5", RNN),
    "vsrrnn fedprox (5 frames)": ({"name": "fedprox"}, "clips:5", RNN),
    "vsrrnn fedvsr (5 frames)": ({"name": "fedvsr"}, "clips:5", RNN),
    "vsrrnn fedavg (1 frame: single image)": (FEDAVG, "clips:1", RNN),
    "vsrrnn centralised, 5 frames": (FEDAVG, "clips:5", {**RNN, "clients": 1}),
    "vsrrnn centralised, 1 frame": (FEDAVG, "clips:1", {**RNN, "clients": 1}),
    "vsrrnn no alignment, fedavg (5 frames)": (FEDAVG, "clips:5", {**RNN, "model_kwargs": {"align": False}}),
    "vsrrnn no alignment, centralised, 5 frames": (FEDAVG, "clips:5", {**RNN, "clients": 1,
                                                                        "model_kwargs": {"align": False}}),
    "vsrrnn centralised 60 epochs, 5 frames": (FEDAVG, "clips:5", {**RNN, "clients": 1, "rounds": 60}),
    "vsrrnn centralised 60 epochs, 1 frame": (FEDAVG, "clips:1", {**RNN, "clients": 1, "rounds": 60}),
    "vsrnet centralised 60 epochs, 5 frames": (FEDAVG, "clips:5", {"clients": 1, "rounds": 60}),
    "vsrnet centralised 60 epochs, 1 frame": (FEDAVG, "clips:1", {"clients": 1, "rounds": 60}),
}


def vqa(method: dict, seed: int, base: str, dataset: str = "shapesvqa") -> dict:
    return {
        "name": "seed-plora", "seed": seed,
        "data": {"dataset": dataset, "partition": {"kind": "natural", "num_clients": 8}, "client_val_fraction": 0.2},
        "model": {"name": "vlm", "width": 32, "kwargs": {"init_from": base}},
        "client": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "optimizer": "adam"},
        "schedule": {"rounds": 8, "clients_per_round": 8},
        "eval": {"personalized": True},
        "method": {"name": "plora", "rank": 4, "alpha": 8, **method},
    }


PLORA_RUNS = {
    "federated LoRA (share both)": {"share": "both"},
    "pLoRA static (share B)": {"share": "B"},
    "pLoRA dynamic (share B, dynamic)": {"share": "B", "dynamic": True},
    "local LoRA (no federation)": {"share": "local"},
}


def _spread(values: list[float]) -> float:
    half = values[len(values) // 2:]
    return statistics.pstdev(half) if len(half) > 1 else 0.0


def _max_drop(values: list[float]) -> float:
    return max([0.0] + [a - b for a, b in zip(values, values[1:])])


def run_one(cfg: dict, out: Path) -> dict:
    t = time.time()
    result = fedweave.run(cfg, out=out)
    hist = [h for h in result.history if h.get("round", 0) > 0] or result.history
    # the server model's figure: a personalized run's primary metric is personalized_acc_mean,
    # but the spread and the drops are of the global accuracy (as the page defines them)
    metric = "accuracy" if "accuracy" in hist[-1] else result.summary["metric_name"]
    curve = [h[metric] for h in hist]
    row = {"status": result.status, metric: curve[-1], "wall_s": round(time.time() - t, 1),
           "spread_last_half": _spread(curve), "max_drop": _max_drop(curve)}
    for key in ("ssim_y", "personalized_acc_mean", "personalized_acc_worst10"):
        if key in hist[-1]:
            row[key] = hist[-1][key]
        elif key in result.summary:
            row[key] = result.summary[key]
    return row


def bicubic(dataset: str) -> dict:
    """The untrained vsrnet returns the bicubic upsampling of the centre frame: the baseline."""
    from fedweave.config import load_config
    from fedweave.experiment import build_experiment

    exp = build_experiment(load_config(video({"name": "fedavg"}, 0, dataset)))
    return exp.task.evaluate(exp.model_factory(), exp.data.x_test, exp.data.y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["fsar", "fsar-homogeneous", "fedvsr", "fedvsr-central", "fedvsr-rnn",
                                           "plora", "plora-dialect", "all"], default="all")
    parser.add_argument("--work", default="/tmp/fedweave-seed-tasks")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--only", default=None, help="run only the labels that contain this text")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    jobs = []
    if args.part in ("fsar", "all"):
        jobs += [("fsar", label, seed, skeleton(m, seed)) for label, m in FSAR_RUNS.items() for seed in SEEDS]
    if args.part in ("fsar-homogeneous", "all"):
        jobs += [("fsar", label, seed, skeleton(m, seed, "skeleton:6:ntu25")) for label, m in HOMOGENEOUS_RUNS.items()
                 for seed in SEEDS]
    if args.part in ("fedvsr", "all"):
        results.setdefault("fedvsr", {})["bicubic (untrained, 5 frames)"] = {"0": {"status": "baseline",
                                                                                 **bicubic("clips:5")}}
        jobs += [("fedvsr", label, seed, video(m, seed, d)) for label, (m, d) in VSR_RUNS.items() for seed in SEEDS]
    if args.part in ("fedvsr-central", "all"):
        jobs += [("fedvsr", label, seed, video(m, seed, d, clients=1)) for label, (m, d) in CENTRAL_RUNS.items()
                 for seed in SEEDS]
    if args.part in ("fedvsr-rnn", "all"):
        jobs += [("fedvsr", label, seed, video(m, seed, d, **o)) for label, (m, d, o) in RNN_RUNS.items()
                 for seed in SEEDS]
    if args.part in ("plora", "plora-dialect", "all"):
        base = str(work / "vlm-base.pt")
        print(f"pretrained vlm base: public-set accuracy {pretrain_vlm(base, seed=0):.3f}")
    if args.part in ("plora", "all"):
        jobs += [("plora", label, seed, vqa(m, seed, base)) for label, m in PLORA_RUNS.items() for seed in SEEDS]
    if args.part in ("plora-dialect", "all"):  # clients that disagree on answers: where personalization should pay
        jobs += [("plora-dialect", label, seed, vqa(m, seed, base, "shapesvqa:8:dialect"))
                 for label, m in PLORA_RUNS.items() for seed in SEEDS]
    jobs = [j for j in jobs if j[2] in args.seeds and (args.only is None or args.only in j[1])]
    for part, label, seed, cfg in jobs:
        row = run_one(cfg, work / f"{part}-{label.replace(' ', '_').replace('/', '-')}-s{seed}")
        results.setdefault(part, {}).setdefault(label, {})[str(seed)] = row
        print(part, label, seed, row, flush=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    for part, rows in results.items():
        print(f"\n## {part}")
        for label, by_seed in rows.items():
            keys = [k for k in next(iter(by_seed.values())) if k not in ("status", "wall_s") and
                    next(iter(by_seed.values()))[k] is not None]
            cells = []
            for k in keys:
                vals = [r[k] for r in by_seed.values()]
                cells.append(f"{k} {statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}")
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
