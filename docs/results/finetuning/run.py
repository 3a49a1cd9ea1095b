"""Federated fine-tuning of a small language model: pLoRA vs FedAvg-LoRA vs local LoRA, and
Ferret vs FedAvg (full parameters). The runs behind the fine-tuning sections of
docs/results/personalization.md.

Protocol (one seed; everything deterministic for a given Python version, since the text is
the stdlib's docstrings):

1. **Base model.** The ``transformer`` (d_model 64, 2 layers, 4 heads, 116k parameters) is
   pretrained centrally on ``pydocs:32`` with ``data.name: public`` (32 stdlib modules,
   6.6k sequences of 32 characters), Adam lr 3e-3, batch 32, ``PRETRAIN_STEPS`` steps, and
   saved to ``runs/finetuning-results/base.pt``.
2. **Federated fine-tuning** on ``pydocs:32`` (the 20 *other* modules, one client per
   module: ``partition.kind: natural``), 20% of the sequences held out as the test split
   (stratified by module), 20% of each client's rest as its validation split. Every round
   all 20 clients train ``client.local_steps`` Adam steps (batch 16) from the base loaded
   with ``model.kwargs.init_from``. Methods:

   * ``plora``         pLoRA, rank 8, α 16, server averages B, A stays on the client;
   * ``fedavg-lora``   ``plora`` with ``share: both`` (A and B averaged);
   * ``local-lora``    ``plora`` with ``share: local`` (no aggregation);
   * ``plora-a-per-client`` ablation: each client's A from its own seed (no shared basis);
   * ``fedavg-full``   FedAvg on all 116k parameters (lr 1e-3);
   * ``ferret-*``      Ferret on all parameters (same local training as fedavg-full), with
     block size / vectors per block / server learning rate as named.

Figures: the global model's test perplexity; each client's *personalized* perplexity on
its validation split — the exact token-level exp(mean loss) per client, computed here from
the clients' final states (the engine's ``personalized_acc_mean`` averages per-sequence
perplexities instead, see fedweave.lm) — its mean and worst (highest) over clients; bytes
per round each way. The "base" row is the pretrained model without fine-tuning.

Usage::

    .venv/bin/python docs/results/finetuning/run.py            # pretrain + every run + tables
    .venv/bin/python docs/results/finetuning/run.py --only plora,fedavg-lora
    .venv/bin/python docs/results/finetuning/run.py --only-report

Runs go to ``runs/finetuning-results/`` (not versioned); ``results.json``, ``results.csv``
and ``table.md`` are written next to this script. This script drives the simulator
directly (``fedweave.sim.engine.Simulator``) to read the clients' final states.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RUNS = ROOT / "runs" / "finetuning-results"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SEQ = 32
DATASET = f"pydocs:{SEQ}"
MODEL_KW = {"d_model": 64, "n_layers": 2, "n_heads": 4}
PRETRAIN_STEPS = 1000
ROUNDS = 15
LOCAL_STEPS = 10

BASE = {
    "seed": 0,
    "data": {"dataset": DATASET, "partition": {"kind": "natural"}, "test_fraction": 0.2, "client_val_fraction": 0.2},
    "task": {"kind": "language_model"},
    "model": {"name": "transformer", "kwargs": dict(MODEL_KW)},
    "client": {"local_steps": LOCAL_STEPS, "batch_size": 16, "optimizer": "adam", "lr": 3e-3},
    "schedule": {"rounds": ROUNDS, "clients_per_round": 20},
    "eval": {"every": 5, "personalized": True, "batch_size": 4096},
    "executor": {"threads": 1},
}

LORA = {"name": "plora", "rank": 8, "alpha": 16.0}
RUN_SPECS = {
    "plora": {"method": dict(LORA)},
    "fedavg-lora": {"method": {**LORA, "share": "both"}},
    "local-lora": {"method": {**LORA, "share": "local"}},
    "plora-a-per-client": {"method": {**LORA, "a_init": "per_client"}},
    # evaluated every round: its curve is the yardstick for Ferret at equal uplink bytes
    "fedavg-full": {"method": {"name": "fedavg"}, "client": {"lr": 1e-3}, "eval": {"every": 1}},
    "ferret-b4096-n64-lr1": {"method": {"name": "ferret", "block_size": 4096, "num_vectors": 64}, "client": {"lr": 1e-3}},
    "ferret-b4096-n64-lr0.1": {"method": {"name": "ferret", "block_size": 4096, "num_vectors": 64, "server_lr": 0.1},
                               "client": {"lr": 1e-3}},
    "ferret-b1024-n64-lr0.1": {"method": {"name": "ferret", "block_size": 1024, "num_vectors": 64, "server_lr": 0.1},
                               "client": {"lr": 1e-3}},
    "ferret-b1024-n256-lr0.25": {"method": {"name": "ferret", "block_size": 1024, "num_vectors": 256, "server_lr": 0.25},
                                 "client": {"lr": 1e-3}},
}


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def pretrain(path: Path) -> dict:
    from fedweave.data.sources import load_source
    from fedweave.lm import LanguageModelTask, build_transformer
    from fedweave.params import FlatModel
    from fedweave.rng import derive_seed, torch_generator
    from fedweave.train import TrainSettings, local_train

    src = load_source(DATASET, data_name="public")
    torch.manual_seed(derive_seed(0, "init"))
    module = build_transformer((SEQ,), src.num_classes, **MODEL_KW)
    flat = FlatModel(module)
    t0 = time.time()
    res = local_train(flat, LanguageModelTask(), src.x_train, src.y_train, torch.arange(len(src.x_train)),
                      TrainSettings(local_steps=PRETRAIN_STEPS, batch_size=32, lr=3e-3, optimizer="adam"),
                      torch_generator(0, "pretrain"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, path)
    return {"pretrain_steps": PRETRAIN_STEPS, "pretrain_sequences": len(src.x_train), "pretrain_loss_last": res.mean_loss,
            "pretrain_wall_s": time.time() - t0}


def client_perplexities(exp, module_loader) -> np.ndarray:
    """Exact token-level perplexity of each client's model on its validation split."""
    data, task = exp.data, exp.task
    out = []
    for cid, val in enumerate(data.client_val):
        module = module_loader(cid)
        out.append(task.evaluate(module, data.x[val], data.y[val])["perplexity"])
    return np.array(out)


def execute(name: str, cfg_dict: dict) -> dict:
    import fedweave
    from fedweave.experiment import _write_summary
    from fedweave.messages import Broadcast
    from fedweave.rundir import RunDirectory
    from fedweave.sim.engine import Simulator
    from fedweave.sim.executors import make_executor

    cfg = fedweave.load_config(cfg_dict)
    path = RUNS / name
    shutil.rmtree(path, ignore_errors=True)
    cfg.output.dir = str(path)
    exp = fedweave.build_experiment(cfg)
    run_dir = RunDirectory(path)
    run_dir.create(cfg.to_yaml())
    torch.set_num_threads(cfg.executor.threads)
    t0 = time.time()
    exp.executor = make_executor("serial")
    exp.executor.start(exp.worker_setup())
    sim = Simulator(exp, run_dir, None)
    sim.run()
    exp.executor.close()
    wall = time.time() - t0
    summary = _write_summary(exp, run_dir, sim, "completed", None)
    state = sim.committed.state
    broadcast = Broadcast(state.version, state.params, state.buffers)

    def personal(cid):
        exp.algorithm.personalize(sim.eval_model, broadcast, sim.store.get(cid), sim.ledger.initial_personal)
        return sim.eval_model.module

    pers = client_perplexities(exp, personal)
    sim.ledger.load_eval_model(state)
    glob = client_perplexities(exp, lambda cid: sim.eval_model.module)
    rounds = summary["rounds_completed"]
    last = sim.committed.history[-1]
    return {
        "run": name,
        "method": cfg.method.name,
        "test_perplexity": last["perplexity"],
        "test_accuracy": last["accuracy"],
        "global_on_clients_mean": float(glob.mean()),
        "personalized_mean": float(pers.mean()),
        "personalized_worst": float(pers.max()),
        "personalized_best": float(pers.min()),
        "engine_personalized_acc_mean": last.get("personalized_acc_mean"),
        "shared_params": int(exp.spec.num_params),
        "bytes_up_per_round": summary["bytes_up"] / rounds,
        "bytes_down_per_round": summary["bytes_down"] / rounds,
        "wall_s": wall,
        "history": [{k: r.get(k) for k in ("round", "perplexity", "loss", "train_loss", "personalized_acc_mean")}
                    for r in sim.committed.history],
    }


def base_row(base_path: Path) -> dict:
    import fedweave

    cfg = fedweave.load_config(merge(BASE, {"model": {"kwargs": {"init_from": str(base_path)}}}))
    exp = fedweave.build_experiment(cfg)
    module = exp.model_factory()
    test = exp.task.evaluate(module, exp.data.x_test, exp.data.y_test)
    per = client_perplexities(exp, lambda cid: module)
    return {"run": "base", "method": "-", "test_perplexity": test["perplexity"], "test_accuracy": test["accuracy"],
            "global_on_clients_mean": float(per.mean()), "personalized_mean": float(per.mean()),
            "personalized_worst": float(per.max()), "personalized_best": float(per.min()),
            "shared_params": 0, "bytes_up_per_round": 0, "bytes_down_per_round": 0, "wall_s": 0.0, "history": []}


def report(results: dict) -> None:
    rows = [results["runs"][k] for k in ["base", *RUN_SPECS] if k in results["runs"]]
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    cols = ["run", "test_perplexity", "personalized_mean", "personalized_worst", "global_on_clients_mean",
            "shared_params", "bytes_up_per_round", "bytes_down_per_round", "wall_s"]
    with open(HERE / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] if not isinstance(r[c], float) else f"{r[c]:.4f}" for c in cols])
    lines = ["| run | test ppl (global) | personalized ppl, mean | personalized ppl, worst client | global ppl on client val | "
             "shared params | uplink / round | downlink / round | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['test_perplexity']:.3f} | {r['personalized_mean']:.3f} | {r['personalized_worst']:.3f} | "
                     f"{r['global_on_clients_mean']:.3f} | {r['shared_params']:,} | {_bytes(r['bytes_up_per_round'])} | "
                     f"{_bytes(r['bytes_down_per_round'])} | {r['wall_s']:.0f} |")
    meta = results["meta"]
    lines += ["", f"Python {meta['python']}, torch {meta['torch']}, peft {meta.get('peft')}; pretraining: "
              f"{meta.get('pretrain_steps')} steps on {meta.get('pretrain_sequences')} public sequences."]
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _bytes(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.1f} kB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="comma-separated run names")
    ap.add_argument("--only-report", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # small models: one thread is fastest, and the numbers do not depend on the core count
    out = HERE / "results.json"
    results = json.loads(out.read_text()) if out.exists() else {"meta": {}, "runs": {}}
    if args.only_report:
        report(results)
        return 0
    base_path = RUNS / "base.pt"
    import peft

    results["meta"].update({"python": platform.python_version(), "torch": torch.__version__, "peft": peft.__version__,
                            "rounds": ROUNDS, "local_steps": LOCAL_STEPS, "clients": 20})
    if not base_path.exists() or "pretrain_steps" not in results["meta"]:
        results["meta"].update(pretrain(base_path))
    results["runs"]["base"] = base_row(base_path)
    names = args.only.split(",") if args.only else list(RUN_SPECS)
    for name in names:
        cfg = merge(merge(BASE, RUN_SPECS[name]), {"name": name, "model": {"kwargs": {"init_from": str(base_path)}}})
        print(f"== {name}", flush=True)
        results["runs"][name] = execute(name, cfg)
        r = results["runs"][name]
        print(f"   test ppl {r['test_perplexity']:.3f}  personalized {r['personalized_mean']:.3f}  "
              f"up/round {r['bytes_up_per_round']:.0f}  {r['wall_s']:.0f}s", flush=True)
        (HERE / "results.json").write_text(json.dumps(results, indent=1))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
