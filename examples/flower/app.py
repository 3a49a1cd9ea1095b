"""A Flower ServerApp and ClientApp that aggregate with a fedweave method, run in Flower's
own simulation (4 supernodes on scikit-learn's digits, each holding a quarter of the data).

    python examples/flower/app.py                     # the coordinate-wise median, 3 rounds
    python examples/flower/app.py --method fedadam --rounds 5

Needs ``pip install "fedweave[flower]" "flwr[simulation]"``. The ClientApp is ordinary
Flower code: it trains the received arrays and replies with them and ``num-examples``,
which is all the methods of ``FedweaveStrategy`` that need nothing more ask for.
"""

from __future__ import annotations

import argparse

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from sklearn.datasets import load_digits

from fedweave.integrations.flower import FedweaveStrategy

NODES = 4


def make_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def node_data(partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return x[partition::NODES], y[partition::NODES]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of SGD on this node's quarter of the digits."""
    partition = int(context.node_config.get("partition-id", 0))
    x, y = node_data(partition)
    net = make_net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=float(msg.content["config"].get("lr", 0.1)))
    g = torch.Generator().manual_seed(partition)
    for idx in torch.randperm(len(x), generator=g).split(32):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(x)})})
    return Message(content=content, reply_to=msg)


def make_server(method: str, params: dict, rounds: int, result: dict) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(0)
        strategy = FedweaveStrategy(method, params=params, fraction_evaluate=0.0, min_train_nodes=NODES,
                                    min_available_nodes=NODES)
        from flwr.app import ConfigRecord

        out = strategy.start(grid=grid, initial_arrays=ArrayRecord(make_net().state_dict()),
                             train_config=ConfigRecord({"lr": 0.1}), num_rounds=rounds)
        result["arrays"] = out.arrays

    return server_app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="median", help="a fedweave method Flower can run (default: median)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    params = {"num_malicious": 1} if args.method in ("median", "trimmed_mean", "krum", "multikrum") else {}
    result: dict = {}
    run_simulation(server_app=make_server(args.method, params, args.rounds, result), client_app=client_app,
                   num_supernodes=NODES, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                                         "init_args": {"num_cpus": 2}})
    net = make_net()
    net.load_state_dict(result["arrays"].to_torch_state_dict())
    x, y = load_digits(return_X_y=True)
    acc = (net(torch.tensor(x / 16.0, dtype=torch.float32)).argmax(1) == torch.tensor(y)).float().mean()
    print(f"{args.method} via Flower, {args.rounds} rounds on {NODES} nodes: accuracy on all digits {acc:.3f}")


if __name__ == "__main__":
    main()
