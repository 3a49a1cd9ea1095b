"""Server optimizers against their formulas, computed with plain Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from fedweave.aggregate import (
    DEFAULT_SERVER_LR,
    SERVER_OPTIMIZERS,
    Replace,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)
from fedweave.errors import ConfigError

X0 = [1.0, -2.0]
# Three rounds of aggregated deltas; the zero in round 3 exercises Yogi's sign(v - 0).
DELTAS = [[0.5, -1.0], [-0.25, 0.5], [0.1, 0.0]]


def vec(values):
    return torch.tensor(values, dtype=torch.float64)


def run(opt: ServerOptimizer, deltas=DELTAS) -> list[list[float]]:
    """Parameters after each step, starting from X0."""
    x = vec(X0)
    state = opt.init(x)
    out = []
    for d in deltas:
        x, state = opt.step(x, vec(d), state)
        out.append(x.tolist())
    return out


def approx_rows(rows):
    return [pytest.approx(r, rel=1e-12, abs=1e-15) for r in rows]


def test_replace_adds_the_delta():
    # 1 + 0.5 = 1.5, then 1.25, then 1.35;  -2 - 1 = -3, then -2.5, then -2.5.
    assert run(Replace()) == approx_rows([[1.5, -3.0], [1.25, -2.5], [1.35, -2.5]])
    assert Replace().init(vec(X0)) == {}


def test_server_sgd_with_momentum_by_hand():
    # lr 0.5, momentum 0.9, g = -d:
    #   m1 = -d1 = (-0.5, 1)                         x1 = x0 - 0.5 m1 = (1.25, -2.5)
    #   m2 = 0.9 m1 - d2 = (-0.45 + 0.25, 0.9 - 0.5) = (-0.2, 0.4)
    #                                                x2 = (1.25 + 0.1, -2.5 - 0.2) = (1.35, -2.7)
    #   m3 = 0.9 m2 - d3 = (-0.18 - 0.1, 0.36 - 0) = (-0.28, 0.36)
    #                                                x3 = (1.35 + 0.14, -2.7 - 0.18) = (1.49, -2.88)
    expected = [[1.25, -2.5], [1.35, -2.7], [1.49, -2.88]]
    assert run(ServerSGD(lr=0.5, momentum=0.9)) == approx_rows(expected)


def test_server_sgd_lr1_momentum0_is_replace():
    gen = torch.Generator().manual_seed(0)
    deltas = torch.randn(4, 2, generator=gen, dtype=torch.float64).tolist()
    assert run(ServerSGD(1.0, 0.0), deltas) == run(Replace(), deltas)


def reference_adaptive(kind, lr, beta1, beta2, tau, deltas=DELTAS):
    """Reddi et al. 2021, Algorithm 2, one coordinate at a time with plain floats."""
    x = list(X0)
    m = [0.0, 0.0]
    v = [tau**2, tau**2]
    out = []
    for d in deltas:
        for i in range(2):
            m[i] = beta1 * m[i] + (1 - beta1) * d[i]
            sq = d[i] ** 2
            if kind == "adam":
                v[i] = beta2 * v[i] + (1 - beta2) * sq
            elif kind == "yogi":
                sign = (v[i] > sq) - (v[i] < sq)
                v[i] = v[i] - (1 - beta2) * sq * sign
            else:  # adagrad
                v[i] = v[i] + sq
            x[i] = x[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
        out.append(list(x))
    return out


def test_server_adam_first_step_by_hand():
    # m1 = 0.1 * (0.5, -1) = (0.05, -0.1)
    # v1 = 0.99 * 1e-6 + 0.01 * (0.25, 1) = (0.00250099, 0.01000099)
    # x1 = x0 + 0.1 * m1 / (sqrt(v1) + 1e-3)
    v1 = [0.99e-6 + 0.0025, 0.99e-6 + 0.01]
    x1 = [
        1.0 + 0.1 * 0.05 / (math.sqrt(v1[0]) + 1e-3),
        -2.0 - 0.1 * 0.1 / (math.sqrt(v1[1]) + 1e-3),
    ]
    assert x1 == pytest.approx([1.0980, -2.0990], abs=1e-4)  # about 0.098 and 0.099 steps
    opt = ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x, state = opt.step(vec(X0), vec(DELTAS[0]), opt.init(vec(X0)))
    assert x.tolist() == pytest.approx(x1, rel=1e-12)
    assert state["m"].tolist() == pytest.approx([0.05, -0.1], rel=1e-12)
    assert state["v"].tolist() == pytest.approx(v1, rel=1e-12)


@pytest.mark.parametrize(
    ("opt", "kind"),
    [
        (ServerAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3), "adam"),
        (ServerAdam(lr=0.3, beta1=0.5, beta2=0.9, tau=0.01), "adam"),
        (ServerYogi(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3), "yogi"),
        (ServerYogi(lr=0.2, beta1=0.0, beta2=0.5, tau=0.1), "yogi"),
        (ServerAdagrad(lr=0.1, beta1=0.9, tau=1e-3), "adagrad"),
        (ServerAdagrad(lr=1.0, beta1=0.0, tau=0.5), "adagrad"),
    ],
)
def test_adaptive_optimizers_follow_algorithm_2(opt, kind):
    beta2 = getattr(opt, "beta2", None)
    expected = reference_adaptive(kind, opt.lr, opt.beta1, beta2, opt.tau)
    assert run(opt) == approx_rows(expected)


def test_yogi_second_moment_moves_additively():
    # From v = tau^2 = 0.01 (tau 0.1), beta2 = 0.5, d = 0.5: d^2 = 0.25 > v, sign(v - d^2) = -1
    # -> v = 0.01 + 0.5 * 0.25 = 0.135. Then d = 0: v stays 0.135 (sign(0.135 - 0) * 0 = 0).
    opt = ServerYogi(lr=0.2, beta1=0.0, beta2=0.5, tau=0.1)
    x = vec([0.0])
    state = opt.init(x)
    x, state = opt.step(x, vec([0.5]), state)
    assert state["v"].item() == pytest.approx(0.135)
    # beta1 = 0: m = d, so x = 0.2 * 0.5 / (sqrt(0.135) + 0.1)
    assert x.item() == pytest.approx(0.1 / (math.sqrt(0.135) + 0.1))
    x, state = opt.step(x, vec([0.0]), state)
    assert state["v"].item() == pytest.approx(0.135)


@pytest.mark.parametrize("name", sorted(SERVER_OPTIMIZERS))
def test_steps_are_pure_and_state_round_trips(name, tmp_path):
    opt = make_server_optimizer(name, momentum=0.9 if name == "sgd" else 0.0)
    x, d1, d2 = vec(X0), vec(DELTAS[0]), vec(DELTAS[1])
    state0 = opt.init(x)
    snapshot = (x.clone(), d1.clone(), {k: v.clone() for k, v in state0.items()})

    x1, state1 = opt.step(x, d1, state0)
    # Inputs untouched.
    assert torch.equal(x, snapshot[0]) and torch.equal(d1, snapshot[1])
    assert state0.keys() == snapshot[2].keys()
    assert all(torch.equal(state0[k], snapshot[2][k]) for k in state0)

    # Save and reload the state mid-run; continuing gives the same result.
    path = tmp_path / "state.pt"
    torch.save(state1, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == state1.keys()
    a, sa = opt.step(x1, d2, state1)
    b, sb = opt.step(x1, d2, loaded)
    assert torch.equal(a, b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_make_server_optimizer_defaults_and_types():
    assert isinstance(make_server_optimizer("replace"), Replace)
    assert make_server_optimizer("sgd") == ServerSGD(lr=1.0, momentum=0.0)
    assert make_server_optimizer("sgd", lr=0.5, momentum=0.9) == ServerSGD(0.5, 0.9)
    assert make_server_optimizer("adam") == ServerAdam(lr=0.1)
    assert make_server_optimizer("yogi") == ServerYogi(lr=0.01)
    assert make_server_optimizer("adagrad") == ServerAdagrad(lr=0.1)
    assert make_server_optimizer("adam", lr=0.5, beta1=0.8, beta2=0.9, tau=1e-2) == ServerAdam(
        0.5, 0.8, 0.9, 1e-2
    )
    assert DEFAULT_SERVER_LR == {
        "replace": 1.0, "sgd": 1.0, "adam": 0.1, "yogi": 0.01, "adagrad": 0.1
    }
    for name in SERVER_OPTIMIZERS:
        assert isinstance(make_server_optimizer(name), ServerOptimizer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "sgd", "lr": 0.0}, "lr must be a finite number > 0"),
        ({"name": "adam", "lr": -1.0}, "lr must be a finite number > 0"),
        ({"name": "sgd", "momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"name": "yogi", "beta1": -0.1}, r"beta1 must be in \[0, 1\)"),
        ({"name": "adam", "beta2": 1.0}, r"beta2 must be in \[0, 1\)"),
        ({"name": "adagrad", "beta2": 1.5}, r"beta2 must be in \[0, 1\)"),
        ({"name": "adagrad", "tau": 0.0}, "tau must be a finite number > 0"),
        ({"name": "nesterov"}, "Unknown server optimizer 'nesterov'. Allowed: adagrad, adam"),
    ],
)
def test_make_server_optimizer_rejects_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_server_optimizer(**kwargs)


def test_step_rejects_mismatched_shapes():
    opt = ServerAdam()
    with pytest.raises(ValueError, match="same shape"):
        opt.step(vec([0.0, 0.0]), vec([1.0]), opt.init(vec([0.0, 0.0])))
