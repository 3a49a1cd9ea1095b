"""The Flower adapter: fedweave methods as Flower Message-API strategies.

The fast tests call the strategy's ``aggregate_train`` with real Flower ``Message``
objects and compare the result with fedweave's own aggregation of the same client
updates, computed independently (FlatModel + the registry's strategy, as the engine
does). The in-process Flower simulation test (Ray backend) is marked slow.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict

from fedweave.config import load_config
from fedweave.integrations import flower as fw
from fedweave.integrations.flower import (
    FedweaveStrategy,
    FlowerAdapterError,
    FlowerVersionError,
    UnsupportedMethodError,
    check_flower_version,
    flower_support,
)
from fedweave.messages import Update
from fedweave.methods import build_method, registered
from fedweave.methods.base import ServerContext, Strategy
from fedweave.params import FlatModel

SRC = Path(__file__).resolve().parents[1] / "src"
NODES = [17, 3, 99, 42]  # Flower node ids; fedweave numbers them 0.. in increasing id
EXAMPLES = {17: 30, 3: 10, 99: 20, 42: 25}


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    )


def state_dict_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v.numpy())) for k, v in record.items()}


def client_state(global_sd: dict[str, torch.Tensor], node: int, rnd: int) -> dict[str, torch.Tensor]:
    """A deterministic 'trained' client model: the global one plus node-specific moves."""
    gen = torch.Generator().manual_seed(1000 * rnd + node)
    out = {}
    for k, v in global_sd.items():
        if v.is_floating_point():
            out[k] = v + 0.05 * torch.randn(v.shape, generator=gen) + 0.01 * (node % 5)
        else:
            out[k] = v + 7  # num_batches_tracked: must not leak into the global model
    return out


def reply(node: int, sd: dict[str, torch.Tensor], metrics: dict) -> Message:
    """A training reply as the ServerApp receives it (metadata filled by Flower)."""
    content = RecordDict({"arrays": ArrayRecord({k: Array(v.numpy()) for k, v in sd.items()}),
                          "metrics": MetricRecord(metrics)})
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="i",
                    group_id="1", created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=meta)


def flat(sd: dict[str, torch.Tensor]) -> FlatModel:
    model = make_model()
    model.load_state_dict(sd)
    return FlatModel(model)


def label_hist(node: int) -> list[int]:
    return [(node * (c + 1)) % 7 + 1 for c in range(3)]


def node_metrics(node: int, rnd: int, with_steps: bool = False, with_hist: bool = False) -> dict:
    m = {"num-examples": EXAMPLES[node], "loss": 0.1 * node + rnd}
    if with_steps:
        m["num-steps"] = 2 + node % 4
    if with_hist:
        m["payload.label_hist"] = label_hist(node)
    return m


def run_both(method: dict, rounds: int = 3, *, client: dict | None = None, kwargs: dict | None = None,
             with_steps=False, with_hist=False):
    """Aggregate the same client models with the adapter and with fedweave directly."""
    kwargs = dict(kwargs or {})
    adapter = FedweaveStrategy(dict(method), client=client, **kwargs)
    global_sd = make_model().state_dict()
    adapter.initialize(ArrayRecord({k: Array(v.numpy()) for k, v in global_sd.items()}), node_ids=NODES)

    cfg_raw = {"method": dict(method), "schedule": {"sampling": "poisson", "sampling_rate": 1.0}}
    if client:
        cfg_raw["client"] = client
    if kwargs.get("server_data") is not None:
        cfg_raw["data"] = {"server_fraction": 0.02}
    strategy, _ = build_method(load_config(cfg_raw))
    ref = flat(global_sd)
    order = sorted(NODES)
    ctx = ServerContext(spec=ref.spec, num_clients=len(NODES),
                        client_sizes=np.array([EXAMPLES[n] for n in order]), clock=fw._WallClock(), seed=0,
                        server_data=kwargs.get("server_data"), round_lr=kwargs.get("client_lr") or 0.0,
                        model_factory=kwargs.get("model_factory"))
    state = strategy.init(ref.params.clone(), ref.buffers.clone(), ctx)

    current = global_sd
    for rnd in range(1, rounds + 1):
        clients = {n: client_state(current, n, rnd) for n in NODES}
        metrics = {n: node_metrics(n, rnd, with_steps, with_hist) for n in NODES}
        replies = [reply(n, clients[n], metrics[n]) for n in NODES]  # arrival order != id order
        arrays, agg_metrics = adapter.aggregate_train(rnd, replies)

        updates = []
        for cid, n in enumerate(order):
            fm = flat(clients[n])
            payload = {"label_hist": torch.tensor(label_hist(n), dtype=torch.float32)} if with_hist else {}
            updates.append(Update(cid, state.version, fm.params - state.params, fm.buffers.clone(), EXAMPLES[n],
                                  metrics[n].get("num-steps", 0), {"loss": metrics[n]["loss"]}, payload))
        state.round = rnd - 1
        state = strategy.aggregate(updates, state, ctx)
        state.round = rnd

        got = flat(state_dict_of(arrays))
        assert torch.equal(got.params, state.params), f"round {rnd}: trainable parameters differ"
        assert torch.equal(got.buffers, state.buffers), f"round {rnd}: buffers differ"
        assert torch.equal(state_dict_of(arrays)["1.num_batches_tracked"], global_sd["1.num_batches_tracked"])
        assert "loss" in agg_metrics and not any(k.startswith("payload.") for k in agg_metrics)
        current = state_dict_of(arrays)
    return adapter, state


STAGED = ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


@pytest.mark.parametrize("name", STAGED)
def test_staged_methods_equal_fedweave(name):
    run_both({"name": name})


def test_server_optimizer_settings_pass_through():
    run_both({"name": "fedadam", "server_lr": 0.05, "beta1": 0.5, "tau": 0.01})


def test_fedprox_equals_fedweave_and_sends_proximal_mu(monkeypatch):
    adapter, _ = run_both({"name": "fedprox"}, rounds=1, client={"mu": 0.3})
    assert adapter.proximal_mu == pytest.approx(0.3)

    class Grid:
        def get_node_ids(self):
            return NODES

    sent = {}

    def construct(record, node_ids, message_type):
        sent["config"], sent["nodes"] = record["config"], node_ids
        return []

    monkeypatch.setattr(adapter, "_construct_messages", construct)
    adapter.configure_train(2, adapter._global, ConfigRecord(), Grid())
    assert sent["config"]["proximal-mu"] == pytest.approx(0.3)
    assert sorted(sent["nodes"]) == sorted(NODES)


def test_fednova_with_client_lr_and_num_steps_equals_fedweave():
    run_both({"name": "fednova"}, kwargs={"client_lr": 0.1}, with_steps=True)


OPTIONAL = {
    "ldawa": ({"name": "ldawa", "warmup_rounds": 1}, {}),
    "median": ({"name": "median"}, {}),
    "trimmed_mean": ({"name": "trimmed_mean", "num_malicious": 1}, {}),
    "krum": ({"name": "krum", "num_malicious": 1}, {}),
    "multikrum": ({"name": "multikrum", "num_malicious": 1, "num_selected": 2}, {}),
    "bulyan": ({"name": "bulyan"}, {}),
    "normclip": ({"name": "normclip"}, {}),
    "feddisco": ({"name": "feddisco"}, {"with_hist": True}),
}


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_newer_methods_equal_fedweave(name):
    if name not in registered():
        pytest.skip(f"method {name!r} is not registered in this version")
    method, extra = OPTIONAL[name]
    run_both(method, **extra)


def test_fedlaw_with_server_data_and_model_equals_fedweave():
    if "fedlaw" not in registered():
        pytest.skip("fedlaw is not registered in this version")
    gen = torch.Generator().manual_seed(5)
    server_data = (torch.randn(24, 4, generator=gen), torch.randint(0, 3, (24,), generator=gen))
    run_both({"name": "fedlaw", "server_epochs": 1}, rounds=2,
             kwargs={"server_data": server_data, "model_factory": make_model})


def test_reply_order_does_not_matter():
    global_sd = make_model().state_dict()
    record = ArrayRecord({k: Array(v.numpy()) for k, v in global_sd.items()})
    replies = [reply(n, client_state(global_sd, n, 1), node_metrics(n, 1)) for n in NODES]
    results = []
    for order in (replies, replies[::-1]):
        adapter = FedweaveStrategy("fedadam")
        adapter.initialize(record)
        arrays, _ = adapter.aggregate_train(1, order)
        results.append(flat(state_dict_of(arrays)).params)
    assert torch.equal(results[0], results[1])


# -- refusals and bad input -------------------------------------------------------------


def test_scaffold_is_refused_naming_what_is_missing():
    with pytest.raises(UnsupportedMethodError) as err:
        FedweaveStrategy("scaffold")
    msg = str(err.value)
    assert "scaffold" in msg and "client-side training logic" in msg and "per-client state" in msg
    assert not flower_support("scaffold").supported


def test_fednova_needs_the_client_learning_rate():
    with pytest.raises(UnsupportedMethodError, match="client_lr"):
        FedweaveStrategy("fednova")
    support = flower_support("fednova", client_lr=0.1)
    assert support.supported and any("num-steps" in d for d in support.client_duties)


def test_missing_num_steps_is_reported():
    adapter = FedweaveStrategy("fednova", client_lr=0.1)
    global_sd = make_model().state_dict()
    adapter.initialize(ArrayRecord({k: Array(v.numpy()) for k, v in global_sd.items()}))
    with pytest.raises(FlowerAdapterError, match="num-steps"):
        adapter.aggregate_train(1, [reply(3, client_state(global_sd, 3, 1), node_metrics(3, 1))])


def test_asynchronous_methods_are_refused():
    async_methods = [n for n, info in registered().items() if "sync" not in info.modes]
    if not async_methods:
        pytest.skip("no asynchronous method registered")
    with pytest.raises(UnsupportedMethodError, match="synchronous"):
        FedweaveStrategy(async_methods[0])


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(fw.ConfigError, match="fedavg"):
        FedweaveStrategy("no-such-method")


def test_payload_from_metrics_reaches_a_custom_strategy():
    seen = {}

    class HistWeighted(Strategy):
        name = "hist"
        needs = {"payload:label_hist"}

        def aggregate(self, updates, state, ctx):
            seen["hist"] = [u.payload["label_hist"] for u in updates]
            seen["ids"] = [u.client_id for u in updates]
            state.version += 1
            return state

    adapter = FedweaveStrategy(HistWeighted())
    assert any("payload.label_hist" in d for d in adapter.support.client_duties)
    global_sd = make_model().state_dict()
    adapter.initialize(ArrayRecord({k: Array(v.numpy()) for k, v in global_sd.items()}))
    replies = [reply(n, client_state(global_sd, n, 1), node_metrics(n, 1, with_hist=True)) for n in (99, 3)]
    adapter.aggregate_train(1, replies)
    assert seen["ids"] == [0, 1]  # new nodes are numbered in increasing node id: 3 -> 0, 99 -> 1
    assert torch.equal(seen["hist"][0], torch.tensor(label_hist(3), dtype=torch.float32))
    assert torch.equal(seen["hist"][1], torch.tensor(label_hist(99), dtype=torch.float32))
    with pytest.raises(FlowerAdapterError, match="payload.label_hist"):
        adapter.aggregate_train(2, [reply(3, client_state(global_sd, 3, 2), node_metrics(3, 2))])


def test_bad_replies_are_reported():
    adapter = FedweaveStrategy("fedavg")
    global_sd = make_model().state_dict()
    with pytest.raises(FlowerAdapterError, match="initialize"):
        adapter.aggregate_train(1, [reply(3, global_sd, {"num-examples": 1})])
    adapter.initialize(ArrayRecord({k: Array(v.numpy()) for k, v in global_sd.items()}))
    with pytest.raises(FlowerAdapterError, match="num-examples"):
        adapter.aggregate_train(1, [reply(3, global_sd, {"loss": 1.0})])
    wrong = dict(global_sd)
    wrong["0.weight"] = torch.zeros(2, 2)
    with pytest.raises(FlowerAdapterError, match="0.weight"):
        adapter.aggregate_train(1, [reply(3, wrong, {"num-examples": 1})])
    missing = {k: v for k, v in global_sd.items() if k != "3.bias"}
    with pytest.raises(FlowerAdapterError, match="missing 3.bias"):
        adapter.aggregate_train(1, [reply(3, missing, {"num-examples": 1})])


def test_non_finite_updates_are_dropped():
    adapter = FedweaveStrategy("fedavg")
    global_sd = make_model().state_dict()
    adapter.initialize(ArrayRecord({k: Array(v.numpy()) for k, v in global_sd.items()}))
    bad = client_state(global_sd, 3, 1)
    bad["0.weight"][0, 0] = float("nan")
    good = client_state(global_sd, 17, 1)
    arrays, _ = adapter.aggregate_train(1, [reply(3, bad, node_metrics(3, 1)), reply(17, good, node_metrics(17, 1))])
    torch.testing.assert_close(state_dict_of(arrays)["0.weight"], good["0.weight"], rtol=0, atol=1e-6)  # node 17 only
    assert adapter.aggregate_train(2, [reply(3, bad, node_metrics(3, 2))]) == (None, None)


def test_unsupported_flower_versions_name_the_fix():
    for version in ("1.20.0", "2.0.1", "0.19"):
        with pytest.raises(FlowerVersionError, match=r'pip install "fedweave\[flower\]"'):
            check_flower_version(version)
    assert check_flower_version("1.42.0") == "1.42.0"
    assert issubclass(FlowerVersionError, ImportError)


def _run_check(*args):
    env = {"PYTHONPATH": str(SRC)} if importlib.util.find_spec("fedweave") is None else None
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fedweave.integrations.flower", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_command_line_check_exits_2_on_refusal(capsys):
    res = _run_check("scaffold")
    assert res.returncode == 2 and "cannot run as a Flower strategy" in res.stderr
    assert fw.main(["fedprox", "--set", "client.mu=0.1"]) == 0
    assert "proximal-mu" in capsys.readouterr().out
    assert fw.main(["fednova"]) == 2 and "client_lr" in capsys.readouterr().err
    assert fw.main(["fednova", "--client-lr", "0.1"]) == 0 and "num-steps" in capsys.readouterr().out


def test_command_line_check_reports_an_unsupported_flower(monkeypatch):
    monkeypatch.setattr(fw, "_PROBLEM", FlowerVersionError("Flower 1.20.0 is installed, but ..."))
    assert fw.main(["fedavg"]) == 2
    with pytest.raises(FlowerVersionError):
        FedweaveStrategy("fedavg")


# -- Flower's own in-process simulation (Ray backend) -----------------------------------------


def _train_client(msg, context):
    """ClientApp train: a few SGD steps of a tiny linear model on node-specific data."""
    from flwr.app import ArrayRecord as AR, Message as M, MetricRecord as MR, RecordDict as RD

    pid = int(context.node_config["partition-id"])
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    gen = torch.Generator().manual_seed(pid)
    x = torch.randn(16 + 8 * pid, 3, generator=gen)
    y = (x[:, 0] > 0.3 * pid).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    content = RD({"arrays": AR(model.state_dict()), "metrics": MR({"num-examples": len(x), "loss": 1.0})})
    return M(content=content, reply_to=msg)


@pytest.mark.slow
def test_flower_simulation_matches_fedweave():
    pytest.importorskip("ray")
    import cloudpickle
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test file

    class Recording(FedweaveStrategy):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.log = []

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.log.append((state_dict_of(self._global), [
                (m.metadata.src_node_id, state_dict_of(m.content["arrays"]), int(m.content["metrics"]["num-examples"]))
                for m in replies
            ]))
            return super().aggregate_train(server_round, replies)

    client_app = ClientApp()
    client_app.train()(_train_client)
    out = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        torch.manual_seed(0)
        strategy = Recording("fedadam", params={"server_lr": 0.05}, fraction_evaluate=0.0, min_train_nodes=3,
                             min_available_nodes=3)
        out["strategy"] = strategy
        out["result"] = strategy.start(grid=grid, initial_arrays=ArrayRecord(torch.nn.Linear(3, 2).state_dict()),
                                       num_rounds=3)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2}})
    strategy, result = out["strategy"], out["result"]
    assert len(strategy.log) == 3

    # fedweave's own aggregation of the recorded client models
    ref_strategy, _ = build_method(load_config({"method": {"name": "fedadam", "server_lr": 0.05}}))
    first = strategy.log[0][0]
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(first)
    fm = FlatModel(model)
    ids = {n: i for i, n in enumerate(sorted(n for n, _, _ in strategy.log[0][1]))}
    ctx = ServerContext(spec=fm.spec, num_clients=3, client_sizes=np.zeros(3, dtype=np.int64),
                        clock=fw._WallClock(), seed=0)
    state = ref_strategy.init(fm.params.clone(), fm.buffers.clone(), ctx)
    for rnd, (glob, rows) in enumerate(strategy.log):
        model.load_state_dict(glob)
        assert torch.equal(FlatModel(model).params, state.params), f"round {rnd + 1}: globals differ"
        updates = []
        for node, sd, n in sorted(rows, key=lambda r: ids[r[0]]):
            model.load_state_dict(sd)
            updates.append(Update(ids[node], state.version, FlatModel(model).params - state.params,
                                  torch.zeros(0), n))
        state.round = rnd
        state = ref_strategy.aggregate(updates, state, ctx)
    model.load_state_dict(result.arrays.to_torch_state_dict())
    assert torch.equal(FlatModel(model).params, state.params)
