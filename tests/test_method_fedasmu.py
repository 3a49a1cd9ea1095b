"""FedASMU (Liu et al., AAAI 2024): learned staleness-aware server weight α and the
device-side merge with the fetched global model (weight β)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedweave
from fedweave import ConfigError, build_experiment, load_config
from fedweave.messages import Broadcast, Update
from fedweave.methods import build_method
from fedweave.methods.base import ClientJob, ServerContext
from fedweave.methods.fedasmu import (
    FedASMUClient,
    FedASMUParams,
    FedASMUStrategy,
    device_beta,
    inverse_softplus,
    server_alpha,
    softplus,
)
from fedweave.sim.events import VirtualClock
from fedweave.sim.worker import Worker


def ctx(n=3, lr=0.1):
    c = ServerContext(spec=None, num_clients=n, client_sizes=np.ones(n, dtype=np.int64), clock=VirtualClock(), seed=0)
    c.round_lr = lr
    return c


# -- the weights ------------------------------------------------------------------------------


def test_alpha_and_beta_stay_in_the_unit_interval_for_random_inputs():
    g = np.random.default_rng(0)
    for _ in range(3000):
        raw = torch.tensor(g.normal(0, 8, size=3), dtype=torch.float64)
        t, tau = int(g.integers(1, 10**6)), int(g.integers(0, 10**4))
        mu = float(10 ** g.uniform(-3, 3))
        alpha, d = server_alpha(raw, t, tau, mu)
        assert 0.0 < alpha < 1.0 and torch.isfinite(d).all()
        raw2 = torch.tensor(g.normal(0, 8, size=2), dtype=torch.float64)
        elapsed = int(g.integers(0, 10**4))
        beta, db = device_beta(raw2, int(g.integers(1, 10**6)) + elapsed, elapsed, mu)
        assert 0.0 <= beta < 1.0 and torch.isfinite(db).all()  # φ clamped at 0 gives β = 0
    # β > 0 whenever υ < √(t − t_start + 1)
    raw2 = torch.tensor([inverse_softplus(1.0), inverse_softplus(0.5)], dtype=torch.float64)
    assert device_beta(raw2, 10, 0, 1.0)[0] > 0


def test_alpha_formula_and_tau_plus_one_guard():
    lam, sig, iota, mu = 2.0, 0.7, 0.05, 1.5
    raw = torch.tensor([inverse_softplus(lam), inverse_softplus(sig), inverse_softplus(iota)], dtype=torch.float64)
    assert torch.allclose(softplus(raw), torch.tensor([lam, sig, iota], dtype=torch.float64))
    for t, tau in ((1, 0), (9, 3), (100, 0), (400, 20)):
        xi = lam / (math.sqrt(t) * (tau + 1) ** sig) + iota
        assert server_alpha(raw, t, tau, mu)[0] == pytest.approx(mu * xi / (1 + mu * xi))
    raw_b = torch.tensor([inverse_softplus(3.0), inverse_softplus(0.5)], dtype=torch.float64)
    for t, el in ((5, 1), (50, 8)):
        phi = 3.0 / math.sqrt(t) * (1 - 0.5 / math.sqrt(el + 1))
        assert device_beta(raw_b, t, el, 2.0)[0] == pytest.approx(2 * phi / (1 + 2 * phi))


def test_analytic_derivatives_match_autograd():
    g = np.random.default_rng(1)
    for _ in range(20):
        raw = torch.tensor(g.normal(0, 1, size=3), dtype=torch.float64, requires_grad=True)
        t, tau, mu = int(g.integers(1, 500)), int(g.integers(0, 30)), 0.8
        lam, sig, iota = torch.nn.functional.softplus(raw)
        xi = lam / (math.sqrt(t) * (tau + 1.0) ** sig) + iota
        (mu * xi / (1 + mu * xi)).backward()
        _, d = server_alpha(raw.detach(), t, tau, mu)
        assert torch.allclose(d, raw.grad, atol=1e-12)
        raw2 = torch.tensor([g.normal(1, 1), g.normal(-1, 0.5)], dtype=torch.float64, requires_grad=True)
        el = int(g.integers(1, 40))
        tt = el + int(g.integers(1, 100))
        gamma, ups = torch.nn.functional.softplus(raw2)
        phi = gamma / math.sqrt(tt) * (1 - ups / math.sqrt(el + 1))
        if phi.item() <= 0:
            continue
        (1.3 * phi / (1 + 1.3 * phi)).backward()
        _, db = device_beta(raw2.detach(), tt, el, 1.3)
        assert torch.allclose(db, raw2.grad, atol=1e-12)


# -- the server's meta-gradient ----------------------------------------------------------------


def _quadratic_run(learn: bool):
    """Two merges of device 0 on L(w) = ½‖w − w*‖²; its second upload is SGD on L from the merged model."""
    lr, steps = 0.1, 5
    w_star = torch.full((6,), 3.0, dtype=torch.float64)
    c = ctx(n=2, lr=lr)
    s = FedASMUStrategy(FedASMUParams(learn_server=learn, server_meta_lr=0.5, device_merge=False))
    state = s.init(torch.zeros(6, dtype=torch.float64), torch.zeros(0), c)
    w1 = 0.5 * w_star  # halfway to the optimum
    state = s.on_update(Update(0, 0, w1.clone(), torch.zeros(0), 10, steps, params=w1.clone()), state, c)
    merged = state.params
    # next job of device 0 starts from the merged model: `steps` SGD steps on L
    w = merged.clone()
    for _ in range(steps):
        w = w - lr * (w - w_star)
    raw_before = state.extra["raw"][0].clone()
    state = s.on_update(Update(0, 1, w - merged, torch.zeros(0), 10, steps, params=w.clone()), state, c)
    loss = 0.5 * float(((state.params - w_star) ** 2).sum())
    return loss, raw_before, state


def test_learned_server_parameters_lower_the_loss_on_a_quadratic():
    loss_learned, raw_before, state = _quadratic_run(True)
    loss_fixed, _, fixed_state = _quadratic_run(False)
    assert loss_learned < loss_fixed
    raw_after = state.extra["raw"][0]
    # the first merge moved towards the optimum: α should grow, through λ and ι (σ: ln(τ+1) = 0 at τ = 0)
    assert raw_after[0] > raw_before[0] and raw_after[2] > raw_before[2]
    assert raw_after[1] == raw_before[1]
    assert torch.equal(fixed_state.extra["raw"][0], raw_before)
    assert state.extra["raw"][1].tolist() == raw_before.tolist()  # other devices untouched


def test_meta_step_direction_flips_when_the_merge_hurt():
    """If the first upload moved away from the optimum, α for that device shrinks."""
    lr, steps = 0.1, 5
    w_star = torch.full((4,), 3.0, dtype=torch.float64)
    c = ctx(n=1, lr=lr)
    s = FedASMUStrategy(FedASMUParams(device_merge=False))
    state = s.init(torch.zeros(4, dtype=torch.float64), torch.zeros(0), c)
    bad = -2.0 * w_star
    state = s.on_update(Update(0, 0, bad.clone(), torch.zeros(0), 10, steps, params=bad.clone()), state, c)
    merged = state.params
    w = merged - lr * steps * (merged - w_star)
    raw0 = state.extra["raw"][0].clone()
    alpha_before = server_alpha(raw0, 2, 0, 1.0)[0]
    state = s.on_update(Update(0, 1, w - merged, torch.zeros(0), 10, steps, params=w.clone()), state, c)
    assert server_alpha(state.extra["raw"][0], 2, 0, 1.0)[0] < alpha_before


def test_server_never_writes_in_place_and_keeps_one_vector_per_device():
    c = ctx(n=3)
    s = FedASMUStrategy(FedASMUParams())
    state = s.init(torch.zeros(5, dtype=torch.float64), torch.zeros(0), c)
    g = torch.Generator().manual_seed(0)
    for step, cid in enumerate([0, 1, 0, 2, 1, 0]):
        snap = {k: (v.clone() if torch.is_tensor(v) else dict(v) if isinstance(v, dict) else v) for k, v in state.extra.items()}
        old_params, old_params_copy, old_extra = state.params, state.params.clone(), state.extra
        w = torch.randn(5, generator=g, dtype=torch.float64)
        state = s.on_update(Update(cid, max(step - 1, 0), w - state.params, torch.zeros(0), 10, 4, params=w), state, c)
        assert torch.equal(old_params, old_params_copy)
        for k, v in snap.items():
            if torch.is_tensor(v):
                assert torch.equal(old_extra[k], v), k
            elif isinstance(v, dict):
                assert old_extra[k] == v, k
        assert 0 < state.extra["alpha_t"] < 1
    # one vector per device, in the server's per-client store (not in the state)
    assert "u" not in state.extra
    assert all(c.client_store.get(cid)["fedasmu_u"].shape == (5,) for cid in (0, 1, 2))


def test_fixed_weight_ablation_keeps_initial_parameters():
    c = ctx(n=2)
    p = FedASMUParams(learn_server=False, lambda_init=2.0, sigma_init=1.0, iota_init=0.2, mu=1.0)
    s = FedASMUStrategy(p)
    state = s.init(torch.zeros(3, dtype=torch.float64), torch.zeros(0), c)
    for step in range(4):
        w = torch.full((3,), float(step + 1), dtype=torch.float64)
        before = state.params
        state = s.on_update(Update(step % 2, 0, w - before, torch.zeros(0), 10, 4, params=w), state, c)
        t, tau = step + 1, step
        xi = 2.0 / (math.sqrt(t) * (tau + 1)) + 0.2
        alpha = xi / (1 + xi)
        assert torch.allclose(state.params, before + alpha * (w - before))
    assert len(c.client_store) == 0  # nothing learned, nothing kept per device
    assert torch.allclose(softplus(state.extra["raw"]), torch.tensor([[2.0, 1.0, 0.2]] * 2, dtype=torch.float64))


# -- the device side ---------------------------------------------------------------------------


def test_fetch_fraction_and_config(tiny):
    s, client = build_method(load_config({"method": {"name": "fedasmu", "fetch_at": 0.25}, "schedule": {"mode": "async"}}))
    assert client.fetch_fraction(None) == 0.25 and client.stateful and client.upload_full_model
    _, off = build_method(load_config({"method": {"name": "fedasmu", "device_merge": False}, "schedule": {"mode": "async"}}))
    assert off.fetch_fraction(None) is None and not off.stateful
    for bad in ({"fetch_at": 1.0}, {"mu": 0}, {"iota_init": 0}, {"learn": True}):
        with pytest.raises(ConfigError):
            build_method(load_config({"method": {"name": "fedasmu", **bad}, "schedule": {"mode": "async"}}))
    with pytest.raises(ConfigError, match="async"):
        build_method(load_config({"method": {"name": "fedasmu"}, "schedule": {"mode": "buffered"}}))


def _worker_and_job(tiny, fetched_params, fetched_version=4, lr=0.1):
    cfg = load_config(tiny({"method": {"name": "fedasmu", "gamma_init": 2.0, "upsilon_init": 0.3},
                            "schedule": {"mode": "async"}, "client": {"local_steps": 8, "lr": lr}}))
    exp = build_experiment(cfg)
    worker = Worker(exp.worker_setup())
    job = ClientJob(0, 0, 0, Broadcast(0, exp.initial_params, exp.initial_buffers), None, exp.train_settings(lr))
    job.fetched = Broadcast(fetched_version, fetched_params, exp.initial_buffers)
    return exp, worker, job


def test_device_merge_uses_the_fetched_model_and_learns_beta(tiny):
    # a 'fresh global model' that is much better than the initial one: train one centrally
    from fedweave.rng import torch_generator
    from fedweave.train import TrainSettings, local_train

    exp0 = build_experiment(load_config(tiny({"method": {"name": "fedasmu"}, "schedule": {"mode": "async"}})))
    w0 = Worker(exp0.worker_setup())
    w0.model.params.data.copy_(exp0.initial_params)
    idx = torch.arange(len(exp0.data.y))
    local_train(w0.model, w0.task, exp0.data.x, exp0.data.y, idx, TrainSettings(epochs=3, lr=0.1), torch_generator(0, "x"))
    good = w0.model.params.clone()

    exp, worker, job = _worker_and_job(tiny, good)
    client = exp.algorithm
    assert isinstance(client, FedASMUClient)
    out = worker.run(job)
    raw0 = torch.tensor([inverse_softplus(2.0), inverse_softplus(0.3)], dtype=torch.float64)
    beta0 = device_beta(raw0, 5, 4, 1.0)[0]
    assert out.update.metrics["merge_beta"] == pytest.approx(beta0) and beta0 > 0
    assert out.update.num_steps == 8
    new_raw = out.state["fedasmu_raw"]
    # merging with the better model lowered the loss: β (through γ) is pushed up
    assert device_beta(new_raw, 5, 4, 1.0)[0] > beta0
    assert new_raw[0] > raw0[0]

    # without a newer global version there is nothing to merge
    exp2, worker2, job2 = _worker_and_job(tiny, good, fetched_version=0)
    out2 = worker2.run(job2)
    assert out2.update.metrics["merge_beta"] == 0.0
    assert torch.equal(out2.state["fedasmu_raw"], raw0)


def test_engine_run_fetches_and_merges(tiny, tmp_path, monkeypatch):
    seen = []
    orig = FedASMUClient.train

    def spy(self, job, worker, generator):
        seen.append((job.fetched is not None, None if job.fetched is None else job.fetched.version - job.broadcast.version))
        out = orig(self, job, worker, generator)
        seen[-1] += (out.update.metrics.get("merge_beta", 0.0),)
        return out

    monkeypatch.setattr(FedASMUClient, "train", spy)
    cfg = tiny({"method": {"name": "fedasmu"}, "schedule": {"mode": "async", "concurrency": 4, "max_arrivals": 20},
                "system": {"profile": "tiers"}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    assert res.status == "completed"
    assert seen and all(fetched for fetched, _, _ in seen)  # every job fetched
    assert any(el > 0 and beta > 0 for _, el, beta in seen)  # some merged a newer model
    assert all((beta > 0) == (el > 0) for _, el, beta in seen)
    last = res.history[-1]
    assert 0 < last["alpha_t"] < 1 and "lambda_mean" in last
    # the device parameters live in the client-state store
    exp = build_experiment(load_config(cfg))
    assert exp.algorithm.stateful


def test_engine_run_without_device_merge_never_fetches(tiny, tmp_path, monkeypatch):
    seen = []
    orig = FedASMUClient.train

    def spy(self, job, worker, generator):
        seen.append(job.fetched)
        return orig(self, job, worker, generator)

    monkeypatch.setattr(FedASMUClient, "train", spy)
    cfg = tiny({"method": {"name": "fedasmu", "device_merge": False, "learn_server": False},
                "schedule": {"mode": "async", "concurrency": 3, "max_arrivals": 9}})
    res = fedweave.run(cfg, out=tmp_path / "r")
    assert res.status == "completed" and len(seen) >= 9 and all(f is None for f in seen)


# -- the meta step can move the parameters ------------------------------------------------------


def _alpha_recursion(pairs, d, e0, lr, steps, v0, meta_lr, clip, value_space=True):
    """α of one device on L(w) = ½‖w − w*‖², w_g − w* = e·1 (d coordinates), written with plain
    floats from the equations, independently of the module.

    Local training (steps plain SGD steps from w_g) is closed-form: w_i − w* = s·(w_g − w*),
    s = (1 − lr)^steps, so u = w_i − w_g = (s − 1)e per coordinate and the next upload's delta
    from the merged model m is (s − 1)(m − w*), giving g = (1 − s)/(lr·steps)·(m − w*) and
    ∂L/∂α ≈ g·u = d·g·u per coordinate. t = version + 1, τ = 0 (one device), so σ never moves.
    ``value_space``: the projected step on λ, ι (the fix); otherwise the old step on softplus⁻¹.
    """
    sp, sig = (lambda r: math.log1p(math.exp(r))), (lambda r: 1 / (1 + math.exp(-r)))
    isp = lambda v: v + math.log(-math.expm1(-v))  # noqa: E731
    lam, iota, s = 1.0, 0.1, (1 - lr) ** steps
    e, u, alphas, grads = e0, None, [], None
    for k in range(pairs + 1):
        if u is not None:  # feedback for the previous merge
            g = (1 - s) / (lr * steps) * e
            dl = d * g * u
            if value_space:
                lam = max(lam - max(-clip, min(clip, meta_lr * dl * grads[0])), 1e-6)
                iota = max(iota - max(-clip, min(clip, meta_lr * dl * grads[1])), 1e-6)
            else:
                rl, ri = isp(lam), isp(iota)
                rl -= max(-clip, min(clip, meta_lr * dl * grads[0] * sig(rl)))
                ri -= max(-clip, min(clip, meta_lr * dl * grads[1] * sig(ri)))
                lam, iota = sp(rl), sp(ri)
        t = v0 + k + 1
        xi = lam / math.sqrt(t) + iota
        alphas.append(xi / (1 + xi))
        grads = (1 / (1 + xi) ** 2 / math.sqrt(t), 1 / (1 + xi) ** 2)  # ∂α/∂λ, ∂α/∂ι (μ = 1)
        u = (s - 1) * e
        e = e + alphas[-1] * u
    return alphas


def test_meta_step_raises_alpha_when_a_larger_alpha_lowers_the_loss():
    """One device on an IID quadratic, starting at version 1,000: every merge moves towards the
    optimum, so a larger α lowers the loss. After 50 merge/feedback pairs α must have risen by a
    clear margin: the recursion above gives 0.1163 → 0.4146 with the default meta step (0.1,
    clip 0.1), while the old step on the softplus⁻¹ values only reaches 0.137 (+0.02) — the
    margin asked, +0.25, is more than ten times what the old rule achieves."""
    d, e0, lr, steps, v0, pairs = 10, 1.0, 0.1, 5, 1000, 50
    expected = _alpha_recursion(pairs, d, e0, lr, steps, v0, 0.1, 0.1)
    old = _alpha_recursion(pairs, d, e0, lr, steps, v0, 0.1, 1.0, value_space=False)
    assert expected[0] == pytest.approx(0.1163, abs=1e-4)  # ξ = 1/√1001 + 0.1
    assert old[-1] - old[0] < 0.03

    w_star = torch.zeros(d, dtype=torch.float64)
    c = ctx(n=1, lr=lr)
    s = FedASMUStrategy(FedASMUParams(device_merge=False))  # defaults: meta lr 0.1, clip 0.1
    state = s.init(torch.full((d,), e0, dtype=torch.float64), torch.zeros(0), c)
    state.version = v0
    alphas, values = [], []
    for _ in range(pairs + 1):
        w = state.params.clone()
        for _ in range(steps):  # the device's job: plain SGD on L from the current global model
            w = w - lr * (w - w_star)
        state = s.on_update(Update(0, state.version, w - state.params, torch.zeros(0), 10, steps, params=w), state, c)
        alphas.append(state.extra["alpha_t"])
        values.append(softplus(state.extra["raw"][0]))
    assert alphas == pytest.approx(expected, abs=1e-9)
    assert alphas[-1] - alphas[0] >= 0.25
    # it never steps the wrong way: λ and ι only grow, σ stays (ln(τ + 1) = 0)
    assert all((b[[0, 2]] >= a[[0, 2]]).all() and b[1] == a[1] for a, b in zip(values, values[1:]))


def test_projected_step_keeps_parameters_at_or_above_the_floor():
    from fedweave.methods.fedasmu import PARAM_FLOOR, projected_step

    raw = torch.tensor([inverse_softplus(0.05), inverse_softplus(2.0)], dtype=torch.float64)
    # a huge positive gradient: the clipped step (0.1) would take 0.05 below 0 → projected to the floor
    new = softplus(projected_step(raw, torch.tensor([1e6, 0.0], dtype=torch.float64), 0.1, 0.1))
    assert new[0].item() == pytest.approx(PARAM_FLOOR, rel=1e-6) and new[1].item() == pytest.approx(2.0, rel=1e-12)
    # in the values' own units: ∂L/∂raw = sigmoid(raw)·∂L/∂v, so ∂L/∂v = 0.3 moves v by lr·0.3
    dv = torch.tensor([0.3, -0.2], dtype=torch.float64)
    new = softplus(projected_step(raw, dv * torch.sigmoid(raw), 0.1, 0.1))
    assert new.tolist() == pytest.approx([0.05 - 0.03, 2.0 + 0.02], abs=1e-12)
