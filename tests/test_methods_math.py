"""The baseline methods against their equations (METHODS.md, "Baselines every comparison needs").

FedAvg vs centralised GD, FedProx, the server optimizers of StagedStrategy (FedAvgM, FedAdam,
FedYogi, FedAdagrad), SCAFFOLD (option II) and FedNova on a quadratic problem computed by
hand with numpy, and the example-weighted mean of float buffers.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedweave
from fedweave import build_experiment, load_config
from fedweave.messages import Update
from fedweave.methods import ClientJob, ServerContext, build_method
from fedweave.methods.fednova import FedNovaStrategy
from fedweave.methods.scaffold import ScaffoldStrategy
from fedweave.methods.stages import StagedStrategy
from fedweave.params import FlatModel
from fedweave.sim.events import VirtualClock
from fedweave.train import TrainSettings

# -- helpers ---------------------------------------------------------------------------------


def one_client_cfg(tiny, **client):
    return tiny({
        "data": {"partition": {"kind": "iid", "num_clients": 1}, "client_val_fraction": 0.0, "test_fraction": 0.2},
        "schedule": {"rounds": 2, "clients_per_round": 1},
        "client": {"batch_size": 4096, "lr": 0.1, "epochs": None, "local_steps": 3, **client},
    })


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def gd(module: nn.Module, x, y, lr: float, steps: int, mu: float = 0.0, anchor: torch.Tensor | None = None):
    """Plain full-batch gradient descent with torch.optim.SGD (optionally + (mu/2)||w - anchor||^2)."""
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(module(x), y)
        if mu:
            loss = loss + 0.5 * mu * (torch.cat([p.flatten() for p in module.parameters()]) - anchor).pow(2).sum()
        loss.backward()
        opt.step()


def ctx_for(num_clients: int, sizes, spec=None, lr: float = 0.0) -> ServerContext:
    return ServerContext(spec=spec, num_clients=num_clients, client_sizes=np.asarray(sizes), clock=VirtualClock(),
                         seed=0, round_lr=lr)


# -- FedAvg == centralised GD --------------------------------------------------------------------


@pytest.mark.parametrize("client", [{"local_steps": 3}, {"local_steps": None, "epochs": 3}])
def test_fedavg_one_client_full_batch_equals_centralised_gd(tiny, tmp_path, client):
    cfg = one_client_cfg(tiny, **client)
    res = fedweave.run(cfg, out=tmp_path / "run")
    exp = build_experiment(load_config(cfg))
    assert exp.data.num_clients == 1
    idx = exp.data.client_train[0]
    assert len(idx) <= 4096 and len(idx) > 1000  # one full batch per step
    model = exp.model_factory()
    assert torch.equal(flat_params(model), exp.initial_params)
    before = flat_params(model).clone()
    gd(model, exp.data.x[idx], exp.data.y[idx], lr=0.1, steps=2 * 3)
    expected = flat_params(model)
    assert not torch.allclose(expected, before, atol=1e-3)  # training did move the model
    assert torch.allclose(res.params, expected, atol=1e-5)


def test_fedavg_is_size_weighted_average_of_client_models(tiny, tmp_path):
    """Three unequal clients, one full-batch round: w_g = Σ n_k w_k / Σ n_k."""
    cfg = tiny({
        "data": {"partition": {"kind": "dirichlet", "num_clients": 3, "alpha": 0.3}, "client_val_fraction": 0.0},
        "schedule": {"rounds": 1, "clients_per_round": 3},
        "client": {"batch_size": 4096, "lr": 0.2, "epochs": None, "local_steps": 2},
    })
    res = fedweave.run(cfg, out=tmp_path / "run")
    exp = build_experiment(load_config(cfg))
    sizes = exp.data.client_sizes()
    assert len(set(sizes.tolist())) == 3  # genuinely unequal weights
    models = []
    for k in range(3):
        m = exp.model_factory()
        idx = exp.data.client_train[k]
        gd(m, exp.data.x[idx], exp.data.y[idx], lr=0.2, steps=2)
        models.append(flat_params(m))
    expected = sum(float(n) * w for n, w in zip(sizes, models)) / float(sizes.sum())
    uniform = sum(models) / 3
    assert torch.allclose(res.params, expected, atol=1e-5)
    assert not torch.allclose(res.params, uniform, atol=1e-4)


def test_fedprox_mu_zero_is_bit_identical_to_fedavg(tiny, tmp_path):
    base = tiny({"schedule": {"rounds": 3, "clients_per_round": 3}, "client": {"epochs": 1}})
    avg = fedweave.run(base, out=tmp_path / "avg")
    prox = fedweave.run(base, out=tmp_path / "prox", overrides=["method.name=fedprox", "client.mu=0"])
    assert torch.equal(avg.params, prox.params)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]  # noqa: E731
    assert strip(avg.history) == strip(prox.history)
    # and a positive mu does change the result
    prox2 = fedweave.run(base, out=tmp_path / "prox2", overrides=["method.name=fedprox", "client.mu=1.0"])
    assert not torch.equal(avg.params, prox2.params)


def test_fedprox_one_client_equals_gd_on_proximal_objective(tiny, tmp_path):
    mu, lr, steps, rounds = 0.5, 0.1, 3, 2
    cfg = one_client_cfg(tiny, local_steps=steps, lr=lr, mu=mu)
    cfg["method"] = {"name": "fedprox"}
    res = fedweave.run(cfg, out=tmp_path / "run")
    exp = build_experiment(load_config(cfg))
    idx = exp.data.client_train[0]
    model = exp.model_factory()
    for _ in range(rounds):
        anchor = flat_params(model).clone()  # the round's global model
        gd(model, exp.data.x[idx], exp.data.y[idx], lr=lr, steps=steps, mu=mu, anchor=anchor)
    assert torch.allclose(res.params, flat_params(model), atol=1e-5)
    # without the proximal term the result is measurably different
    plain = exp.model_factory()
    gd(plain, exp.data.x[idx], exp.data.y[idx], lr=lr, steps=steps * rounds)
    assert not torch.allclose(res.params, flat_params(plain), atol=1e-5)


# -- server optimizers in StagedStrategy -----------------------------------------------------------

X0 = [0.5, -1.0, 2.0]
ROUNDS = [  # (delta, num_examples) per client, two aggregations
    [([0.1, -0.2, 0.3], 1), ([0.4, 0.0, -0.1], 3)],
    [([-0.3, 0.5, 0.2], 2), ([0.1, 0.1, 0.0], 2), ([0.0, -0.4, 0.6], 4)],
]


def weighted_avg(entries):
    total = sum(n for _, n in entries)
    return [sum(d[j] * n for d, n in entries) / total for j in range(3)]


def run_staged(method_overrides: list[str]):
    strategy, _ = build_method(load_config(None, method_overrides))
    assert isinstance(strategy, StagedStrategy)
    ctx = ctx_for(4, [1, 1, 1, 1])
    state = strategy.init(torch.tensor(X0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), ctx)
    out = []
    for r, entries in enumerate(ROUNDS):
        ups = [Update(i, r, torch.tensor(d, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), n)
               for i, (d, n) in enumerate(entries)]
        state = strategy.aggregate(ups, state, ctx)
        out.append(state.params.tolist())
        assert state.version == r + 1
    return out


def expected_fedavgm(lr, beta):
    x, m, out = list(X0), [0.0] * 3, []
    for entries in ROUNDS:
        avg = [xj + dj for xj, dj in zip(x, weighted_avg(entries))]
        g = [xj - aj for xj, aj in zip(x, avg)]  # g = w_g - avg
        m = [beta * mj + gj for mj, gj in zip(m, g)]
        x = [xj - lr * mj for xj, mj in zip(x, m)]
        out.append(list(x))
    return out


def expected_adaptive(kind, lr, b1, b2, tau):
    x, m, v, out = list(X0), [0.0] * 3, [tau * tau] * 3, []  # v starts at tau^2 (v_{-1} >= tau^2)
    for entries in ROUNDS:
        d = weighted_avg(entries)  # Δ = avg - w_g
        m = [b1 * mj + (1 - b1) * dj for mj, dj in zip(m, d)]
        if kind == "adam":
            v = [b2 * vj + (1 - b2) * dj * dj for vj, dj in zip(v, d)]
        elif kind == "yogi":
            v = [vj - (1 - b2) * dj * dj * math.copysign(1.0, vj - dj * dj) if vj != dj * dj else vj
                 for vj, dj in zip(v, d)]
        else:
            v = [vj + dj * dj for vj, dj in zip(v, d)]
        x = [xj + lr * mj / (math.sqrt(vj) + tau) for xj, mj, vj in zip(x, m, v)]
        out.append(list(x))
    return out


def assert_rounds_close(got, expected):
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=1e-12, abs=1e-12)


def test_fedavg_replace_is_weighted_mean():
    got = run_staged(["method.name=fedavg"])
    x = list(X0)
    exp = []
    for entries in ROUNDS:
        x = [xj + dj for xj, dj in zip(x, weighted_avg(entries))]
        exp.append(list(x))
    assert_rounds_close(got, exp)


def test_uniform_weighting_ignores_sizes():
    got = run_staged(["method.name=fedavg", "method.weighting=uniform"])
    x = list(X0)
    for entries in ROUNDS[:1]:
        x = [xj + sum(d[j] for d, _ in entries) / len(entries) for j, xj in enumerate(x)]
    assert got[0] == pytest.approx(x, rel=1e-12)


@pytest.mark.parametrize("overrides, lr, beta", [
    (["method.name=fedavgm"], 1.0, 0.9),  # preset defaults
    (["method.name=fedavgm", "method.server_lr=0.7", "method.server_momentum=0.5"], 0.7, 0.5),
    (["method.name=fedavg", "method.server_opt=sgd", "method.server_momentum=0.3", "method.server_lr=2.0"], 2.0, 0.3),
])
def test_fedavgm_matches_formula(overrides, lr, beta):
    got = run_staged(overrides)
    expected = expected_fedavgm(lr, beta)
    assert_rounds_close(got, expected)
    # the second step is not plain FedAvg: momentum carries over
    x = list(X0)
    for entries in ROUNDS:
        x = [xj + dj for xj, dj in zip(x, weighted_avg(entries))]
    assert got[1] != pytest.approx(x, rel=1e-6)


def test_fedavgm_beta0_lr1_is_fedavg():
    assert_rounds_close(run_staged(["method.name=fedavgm", "method.server_momentum=0", "method.server_lr=1"]),
                        run_staged(["method.name=fedavg"]))


@pytest.mark.parametrize("method, kind, defaults", [
    ("fedadam", "adam", (0.1, 0.9, 0.99, 1e-3)),
    ("fedyogi", "yogi", (0.01, 0.9, 0.99, 1e-3)),
    ("fedadagrad", "adagrad", (0.1, 0.9, 0.99, 1e-3)),
])
def test_adaptive_server_optimizers_default_hyperparameters(method, kind, defaults):
    got = run_staged([f"method.name={method}"])
    assert_rounds_close(got, expected_adaptive(kind, *defaults))


@pytest.mark.parametrize("method, kind", [("fedadam", "adam"), ("fedyogi", "yogi"), ("fedadagrad", "adagrad")])
def test_adaptive_server_optimizers_custom_hyperparameters(method, kind):
    lr, b1, b2, tau = 0.3, 0.6, 0.8, 0.05
    got = run_staged([f"method.name={method}", f"method.server_lr={lr}", f"method.beta1={b1}",
                      f"method.beta2={b2}", f"method.tau={tau}"])
    assert_rounds_close(got, expected_adaptive(kind, lr, b1, b2, tau))


def test_adaptive_optimizers_differ_from_each_other():
    a = run_staged(["method.name=fedadam", "method.server_lr=0.3", "method.tau=0.05"])
    y = run_staged(["method.name=fedyogi", "method.server_lr=0.3", "method.tau=0.05"])
    g = run_staged(["method.name=fedadagrad", "method.server_lr=0.3", "method.tau=0.05"])
    assert a[1] != pytest.approx(y[1], rel=1e-6)
    assert a[1] != pytest.approx(g[1], rel=1e-6)


def test_staged_aggregate_with_no_updates_is_a_no_op():
    strategy, _ = build_method(load_config(None, ["method.name=fedadam"]))
    ctx = ctx_for(2, [1, 1])
    state = strategy.init(torch.tensor(X0), torch.zeros(0), ctx)
    before = state.params.clone()
    state = strategy.aggregate([], state, ctx)
    assert torch.equal(state.params, before)
    assert state.version == 0


# -- SCAFFOLD and FedNova on a quadratic problem ------------------------------------------------------
#
# Client i's loss is 0.5 ||w - b_i||^2: every example of client i is the vector b_i, the model's
# output is w - x and the loss is half the mean squared norm, so each step's gradient is w - b_i.
# With batch_size 1 and one epoch, a client with n_i examples takes n_i local steps.

B = np.array([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0], [2.0, 1.0, -1.0]])
W0 = np.array([0.5, -1.0, 2.0])


class Quad(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(W0, dtype=torch.float64))

    def forward(self, x):
        return self.w - x


class QuadTask:
    name = "quadratic"

    def loss(self, out, target):
        return 0.5 * out.pow(2).sum(dim=1).mean()


def quad_worker(sizes):
    rows, parts, start = [], [], 0
    for i, n in enumerate(sizes):
        rows += [B[i]] * n
        parts.append(torch.arange(start, start + n))
        start += n
    x = torch.tensor(np.array(rows), dtype=torch.float64)
    data = SimpleNamespace(x=x, y=torch.zeros(len(x), dtype=torch.long), client_train=parts)
    return SimpleNamespace(model=FlatModel(Quad()), task=QuadTask(), data=data)


def drive(strategy, algorithm, worker, cohorts, settings, sizes, num_clients):
    """Run rounds by hand the way the engine does (client-id order, persisted client state)."""
    ctx = ctx_for(num_clients, sizes, worker.model.spec, settings.lr)
    state = strategy.init(worker.model.params.clone(), worker.model.buffers.clone(), ctx)
    store, counters, log = {}, [0] * num_clients, []
    for r, cohort in enumerate(cohorts):
        broadcasts = strategy.configure(cohort, state, ctx)
        updates = []
        for cid in sorted(cohort):
            job = ClientJob(cid, counters[cid], r, broadcasts[cid], store.get(cid), settings)
            with torch.no_grad():
                worker.model.params.copy_(broadcasts[cid].params)
            res = algorithm.train(job, worker, torch.Generator().manual_seed(r * 10 + cid))
            if res.state is not None:
                store[cid] = res.state
            counters[cid] += 1
            updates.append(res.update)
        state = strategy.aggregate(updates, state, ctx)
        log.append((state.params.clone().numpy(), {k: v for k, v in state.extra.items()},
                    {cid: dict(s) for cid, s in store.items()}, updates))
    return log


def local_sgd(w, b, steps, lr, correction=0.0, mu=0.0, anchor=None, momentum=0.0):
    buf = None
    for _ in range(steps):
        g = (w - b) + correction
        if mu:
            g = g + mu * (w - anchor)
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = buf
        w = w - lr * g
    return w


@pytest.mark.parametrize("server_lr", [None, 0.5])
def test_scaffold_option2_matches_hand_computation(server_lr):
    sizes = [2, 3, 1]  # local steps K_i = 2, 3, 1
    N, lr = 3, 0.1
    eta_g = 1.0 if server_lr is None else server_lr
    over = ["method.name=scaffold", f"client.lr={lr}", "client.batch_size=1", "client.epochs=1"]
    if server_lr is not None:
        over.append(f"method.server_lr={server_lr}")
    strategy, algorithm = build_method(load_config(None, over))
    assert isinstance(strategy, ScaffoldStrategy)
    worker = quad_worker(sizes)
    settings = TrainSettings(epochs=1, batch_size=1, lr=lr)
    cohorts = [[0, 1], [1, 2], [0, 1, 2]]
    log = drive(strategy, algorithm, worker, cohorts, settings, sizes, N)

    x, c = W0.copy(), np.zeros(3)
    ci = {i: np.zeros(3) for i in range(N)}
    for r, cohort in enumerate(cohorts):
        dys, dcs = [], []
        for i in cohort:
            K = sizes[i]
            y = local_sgd(x.copy(), B[i], K, lr, correction=c - ci[i])
            c_plus = ci[i] - c + (x - y) / (K * lr)
            dys.append(y - x)
            dcs.append(c_plus - ci[i])
            ci[i] = c_plus
        x = x + eta_g * np.mean(dys, axis=0)
        c = c + (len(cohort) / N) * np.mean(dcs, axis=0)

        params, extra, store, updates = log[r]
        np.testing.assert_allclose(params, x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(extra["c"].numpy(), c, rtol=1e-12, atol=1e-12)
        for u, dy, dc in zip(updates, dys, dcs):
            assert u.num_steps == sizes[u.client_id]
            np.testing.assert_allclose(u.delta.numpy(), dy, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(u.payload["delta_c"].numpy(), dc, rtol=1e-12, atol=1e-12)
        for i in cohort:
            np.testing.assert_allclose(store[i]["c_i"].numpy(), ci[i], rtol=1e-12, atol=1e-12)
    assert not np.allclose(c, 0)  # the control variates did something


def test_scaffold_with_zero_control_variates_first_round_equals_fedavg_uniform():
    """Round 1 (c = c_i = 0): SCAFFOLD is local SGD + a uniform mean of the deltas."""
    sizes = [2, 3, 1]
    strategy, algorithm = build_method(load_config(None, ["method.name=scaffold"]))
    worker = quad_worker(sizes)
    settings = TrainSettings(epochs=1, batch_size=1, lr=0.1)
    log = drive(strategy, algorithm, worker, [[0, 1, 2]], settings, sizes, 3)
    expected = np.mean([local_sgd(W0.copy(), B[i], sizes[i], 0.1) for i in range(3)], axis=0)
    np.testing.assert_allclose(log[0][0], expected, rtol=1e-12)


def a_norm(steps, momentum=0.0, lr=0.0, mu=0.0):
    """FedNova's a_i = ||a_i||_1 computed as a sum (not the closed form)."""
    if mu:
        return sum((1 - lr * mu) ** j for j in range(steps))
    if momentum:
        return sum((1 - momentum ** (j + 1)) / (1 - momentum) for j in range(steps))
    return float(steps)


@pytest.mark.parametrize("variant", ["plain", "momentum", "prox", "server_lr"])
def test_fednova_matches_hand_computation(variant):
    sizes = [1, 2, 4]  # unequal local steps tau_i = 1, 2, 4
    N, lr = 3, 0.1
    momentum = 0.5 if variant == "momentum" else 0.0
    mu = 0.3 if variant == "prox" else 0.0
    eta_g = 0.5 if variant == "server_lr" else 1.0
    over = ["method.name=fednova", f"client.lr={lr}", "client.batch_size=1", "client.epochs=1",
            f"client.momentum={momentum}"]
    if mu:
        over += ["client.objective=prox", f"client.mu={mu}"]
    if variant == "server_lr":
        over.append(f"method.server_lr={eta_g}")
    strategy, algorithm = build_method(load_config(None, over))
    assert isinstance(strategy, FedNovaStrategy)
    worker = quad_worker(sizes)
    settings = TrainSettings(epochs=1, batch_size=1, lr=lr, momentum=momentum)
    cohorts = [[0, 1, 2], [0, 2]]
    log = drive(strategy, algorithm, worker, cohorts, settings, sizes, N)

    x = W0.copy()
    for r, cohort in enumerate(cohorts):
        n = np.array([sizes[i] for i in cohort], dtype=float)
        p = n / n.sum()
        deltas = [local_sgd(x.copy(), B[i], sizes[i], lr, mu=mu, anchor=x, momentum=momentum) - x for i in cohort]
        a = np.array([a_norm(sizes[i], momentum, lr, mu) for i in cohort])
        tau_eff = float((p * a).sum())
        d = [-dl / ai for dl, ai in zip(deltas, a)]
        x = x - eta_g * tau_eff * sum(pi * di for pi, di in zip(p, d))
        np.testing.assert_allclose(log[r][0], x, rtol=1e-12, atol=1e-12)

    # FedNova is not FedAvg when local steps differ
    fedavg_x = W0.copy()
    for cohort in cohorts:
        n = np.array([sizes[i] for i in cohort], dtype=float)
        deltas = [local_sgd(fedavg_x.copy(), B[i], sizes[i], lr, mu=mu, anchor=fedavg_x, momentum=momentum) - fedavg_x
                  for i in cohort]
        fedavg_x = fedavg_x + sum(ni * dl for ni, dl in zip(n / n.sum(), deltas))
    assert not np.allclose(x, fedavg_x, rtol=1e-6)


def test_fednova_equal_steps_equals_fedavg_in_a_run(tiny, tmp_path):
    base = tiny({"client": {"epochs": None, "local_steps": 4, "batch_size": 16}})
    avg = fedweave.run(base, out=tmp_path / "avg")
    nova = fedweave.run(base, out=tmp_path / "nova", overrides=["method.name=fednova"])
    assert torch.allclose(avg.params, nova.params, atol=1e-6)


def test_fednova_unequal_steps_differs_from_fedavg_in_a_run(tiny, tmp_path):
    base = tiny({"client": {"epochs": 1, "batch_size": 16}})
    avg = fedweave.run(base, out=tmp_path / "avg")
    nova = fedweave.run(base, out=tmp_path / "nova", overrides=["method.name=fednova"])
    assert not torch.allclose(avg.params, nova.params, atol=1e-4)


# -- float buffers: example-weighted mean -----------------------------------------------------------


@pytest.mark.parametrize("method", ["fedavg", "fedadam", "fedavgm", "scaffold", "fednova"])
def test_buffers_are_example_weighted_mean(method):
    strategy, _ = build_method(load_config(None, [f"method.name={method}"]))
    ctx = ctx_for(2, [1, 3], lr=0.1)
    state = strategy.init(torch.zeros(2), torch.tensor([0.0, 1.0, 0.0, 1.0]), ctx)
    ups = [
        Update(0, 0, torch.tensor([0.1, 0.2]), torch.tensor([1.0, 2.0, 3.0, 4.0]), 1, num_steps=1,
               payload={"delta_c": torch.zeros(2)}),
        Update(1, 0, torch.tensor([0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0]), 3, num_steps=1,
               payload={"delta_c": torch.zeros(2)}),
    ]
    state = strategy.aggregate(ups, state, ctx)
    expected = (1 * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 3 * torch.tensor([5.0, 6.0, 7.0, 8.0])) / 4
    assert torch.allclose(state.buffers, expected)


def bn_mlp(input_shape, num_classes):
    """A user model with BatchNorm (imported by the run as 'test_methods_math:bn_mlp')."""
    n_in = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, num_classes))


BN_CFG = {
    "model": {"name": f"{__name__}:bn_mlp", "hidden": None},
    "data": {"partition": {"kind": "dirichlet", "num_clients": 3, "alpha": 0.3}, "client_val_fraction": 0.0},
    "schedule": {"rounds": 1, "clients_per_round": 3},
    "client": {"batch_size": 4096, "epochs": None, "local_steps": 1},
}


def test_batchnorm_buffers_in_a_run_are_example_weighted(tiny, tmp_path):
    """One local full-batch step per client: each client's BN running stats come from one
    forward pass at the global model (starting from the experiment's initial buffers), so
    the server's buffers are computable by hand."""
    cfg = tiny(BN_CFG)
    res = fedweave.run(cfg, out=tmp_path / "bn")
    exp = build_experiment(load_config(cfg))
    assert exp.spec.num_buffers == 16
    module = exp.model_factory()
    sizes = exp.data.client_sizes()
    init_mean, init_var = exp.initial_buffers[:8], exp.initial_buffers[8:]
    means, vars_ = [], []
    with torch.no_grad():
        for k in range(3):
            h = module[1](module[0](exp.data.x[exp.data.client_train[k]]))
            means.append(0.9 * init_mean + 0.1 * h.mean(0))  # BatchNorm momentum 0.1
            vars_.append(0.9 * init_var + 0.1 * h.var(0, unbiased=True))
    w = torch.tensor(sizes, dtype=torch.float32) / float(sizes.sum())
    expected = torch.cat([sum(wk * m for wk, m in zip(w, means)), sum(wk * v for wk, v in zip(w, vars_))])
    assert torch.allclose(res.buffers, expected, atol=1e-5)
    unweighted = torch.cat([sum(means) / 3, sum(vars_) / 3])
    assert not torch.allclose(res.buffers, unweighted, atol=1e-4)


def test_initial_buffers_are_the_untouched_model_buffers(tiny):
    exp = build_experiment(load_config(tiny(BN_CFG)))
    fresh = exp.model_factory()
    expected = torch.cat([fresh[2].running_mean, fresh[2].running_var])
    assert torch.equal(expected, torch.cat([torch.zeros(8), torch.ones(8)]))
    assert torch.equal(exp.initial_buffers, expected)
