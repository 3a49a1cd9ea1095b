"""Load benchmark of the gRPC deployment: many clients on loopback, a small model.

Default workload: 50 clients (IID partition of the bundled digits data), an MLP 64-32-10,
all 50 clients in every round, 1 local epoch, batch 32, 20 synchronous rounds, an
evaluation after every round. The server is a real ``fedweave serve`` process on
127.0.0.1; the 50 clients are threads of this process (``fedweave.deploy.DeployClient``,
each with its own gRPC channel), so that 50 clients fit a 2-core machine. The same
config is then simulated with ``fedweave.run``.

Reported:

* rounds per second of the deployment (rounds only: from the first selection to the
  last aggregation, joining excluded), and the same for the simulation;
* the overhead per round: median deployed round time minus median simulated round time
  (the training is the same work in both; what remains is serialization, gRPC, the
  polling and the GIL shared by 50 client threads);
* the server's peak memory (max RSS of the server process, from ``getrusage``);
* bytes per round: the analytic figures (what the simulator counts) and the wire
  figures (serialized gRPC frames), up and down;
* whether the deployment ended with the simulation's global model (it should).

Usage::

    .venv/bin/python bench/deploy_load.py                    # 50 clients, 20 rounds
    .venv/bin/python bench/deploy_load.py --clients 20 --rounds 5 --json out.json

Absolute times on shared machines vary; the script prints the load average. Nothing is
asserted about times; the exit status is 1 only if the run fails or the models differ.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import fedweave  # noqa: E402
from fedweave.config import load_config  # noqa: E402
from fedweave.data.federated import build_federated  # noqa: E402
from fedweave.deploy.client import DeployClient  # noqa: E402
from fedweave.deploy.loopback import free_port  # noqa: E402
from fedweave.deploy.tokens import TokenStore  # noqa: E402


def workload(clients: int, rounds: int, hidden: int) -> dict:
    return {
        "name": "deploy-load", "seed": 0,
        "data": {"dataset": "digits", "partition": {"kind": "iid", "num_clients": clients}, "client_val_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [hidden]},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
        "schedule": {"rounds": rounds, "clients_per_round": clients},
    }


def per_round(records: list[dict], key: str) -> list[float]:
    values = [r[key] for r in records]
    return [b - a for a, b in zip([0] + values[:-1], values)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directories")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="fedweave-deploy-load-"))
    config = workload(args.clients, args.rounds, args.hidden)
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    store, tokens = TokenStore.generate(args.clients)
    store.save(tmp / "tokens.json")
    out = tmp / "deploy"
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.clients} clients, {args.rounds} rounds, "
          f"mlp 64-{args.hidden}-10", flush=True)

    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "fedweave.cli", "serve", str(cfg_path), "--address", address,
                                   "--tokens", str(tmp / "tokens.json"), "--out", str(out),
                                   "--min-clients", str(args.clients), "-q"],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    data = build_federated(load_config(config).data)
    errors: list[BaseException] = []
    clients = [DeployClient(address, tokens[i], partition=i, dataset=data, give_up_s=120) for i in range(args.clients)]

    def client_main(c: DeployClient) -> None:
        try:
            c.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    import logging

    logging.basicConfig(level=logging.ERROR)
    threads = [threading.Thread(target=client_main, args=(c,), daemon=True) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    try:
        rc = server.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        server.kill()
        rc = -1
    total_s = time.perf_counter() - t0
    for t in threads:
        t.join(30)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if rc != 0 or errors:
        print((tmp / "server.log").read_text()[-3000:])
        print(f"server exit {rc}; client errors: {errors[:3]}")
        return 1
    deployed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    deployed_params = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["params"]

    sim = fedweave.run(config, out=tmp / "sim")
    simulated = sim.history
    dep_round = [r["round_wall_s"] for r in deployed]
    sim_round = per_round(simulated, "wall_time_s")
    dep_rounds_s = sum(dep_round)
    sim_rounds_s = sim.summary["wall_time_s"]
    same = bool(torch.allclose(deployed_params, sim.params, atol=1e-6))
    figures = {
        "clients": args.clients, "rounds": args.rounds, "num_params": sim.summary["num_params"],
        "load_average": os.getloadavg()[0],
        "deploy_rounds_per_s": args.rounds / dep_rounds_s,
        "sim_rounds_per_s": args.rounds / sim_rounds_s,
        "deploy_round_s_median": statistics.median(dep_round),
        "sim_round_s_median": statistics.median(sim_round),
        "overhead_per_round_s": statistics.median(dep_round) - statistics.median(sim_round),
        "deploy_total_s_incl_start_and_join": total_s,
        "server_peak_rss_mb": peak_rss_mb,
        "bytes_up_per_round": statistics.mean(per_round(deployed, "bytes_up")),
        "bytes_down_per_round": statistics.mean(per_round(deployed, "bytes_down")),
        "wire_bytes_up_per_round": statistics.mean(per_round(deployed, "wire_bytes_up")),
        "wire_bytes_down_per_round": statistics.mean(per_round(deployed, "wire_bytes_down")),
        "final_accuracy_deploy": deployed[-1]["accuracy"],
        "final_accuracy_sim": simulated[-1]["accuracy"],
        "same_global_model": same,
    }
    width = max(map(len, figures))
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"figures": figures, "deploy_round_s": dep_round, "sim_round_s": sim_round}, indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"run directories kept in {tmp}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
