"""Attacks: each produces the update its definition says; configs are validated."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

import fedweave
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.config import load_config
from fedweave.messages import Update
from fedweave.methods.base import ClientJob
from fedweave.sim.worker import Worker
from fedweave.threats.attacks import (
    AttackedClient, CollusionHook, alie, alie_z, flip_labels, make_plan, malicious_clients, minmax, minsum,
    poisoned_view, sign_flip,
)
from fedweave.threats.triggers import make_trigger


def _upd(cid, delta):
    return Update(client_id=cid, base_version=0, delta=torch.as_tensor(delta, dtype=torch.float64), buffers=None, num_examples=10)


def test_malicious_clients_are_drawn_by_seed():
    a = malicious_clients(0, 20, 0.2)
    assert len(a) == 4 and a == sorted(a) and len(set(a)) == 4
    assert a == malicious_clients(0, 20, 0.2)
    assert a != malicious_clients(1, 20, 0.2)
    assert malicious_clients(0, 20, 0.0) == []


def test_flip_labels():
    y = torch.tensor([0, 1, 2, 9])
    assert flip_labels(y, 10).tolist() == [9, 8, 7, 0]
    assert flip_labels(y, 10, source=1, target=7).tolist() == [0, 7, 2, 9]


def test_alie_is_mean_minus_z_std():
    # n = 10 clients, m = 2 malicious: s = floor(10/2 + 1) - 2 = 4, z = Phi^-1((10 - 4)/10)
    assert alie_z(10, 2) == pytest.approx(NormalDist().inv_cdf(0.6))
    ref = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]], dtype=torch.float64)
    mu, sd = torch.tensor([3.0, 2.0]), torch.tensor([2.0, 2.0])  # unbiased std
    z = NormalDist().inv_cdf(0.6)
    assert torch.allclose(alie(ref, 10, 2), (mu - z * sd).double())
    assert torch.allclose(alie(ref, 10, 2, z=1.5), (mu - 1.5 * sd).double())


@pytest.mark.parametrize("fn,bound", [(minmax, None), (minsum, "min"), (minsum, "max")])
@pytest.mark.parametrize("dev", ["std", "unit_vec", "sign"])
def test_minmax_minsum_find_the_largest_gamma(fn, bound, dev):
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    upd, gamma = fn(ref, dev, 10.0) if bound is None else fn(ref, dev, 10.0, bound)
    mu = ref.mean(0)
    d = {"std": ref.std(0), "unit_vec": mu / mu.norm(), "sign": mu.sign()}[dev]
    assert torch.allclose(upd, mu - gamma * d)

    def ok(g):
        x = mu - g * d
        dist = ((x[None] - ref) ** 2).sum(1)
        pair = torch.cdist(ref, ref) ** 2
        if fn is minmax:
            return dist.max() <= pair.max() + 1e-9
        scores = pair.sum(1)
        return dist.sum() <= (scores.min() if bound == "min" else scores.max()) + 1e-9

    assert 0 < gamma <= 10.0 and ok(gamma)
    if gamma < 10.0:
        assert not ok(gamma * 1.001 + 1e-6)


def test_minsum_official_min_bound_by_hand():
    # Benign updates {0, 1, 10} in 1-D, deviation = std.
    # μ = 11/3; unbiased variance = ((11/3)² + (8/3)² + (19/3)²)/2 = (546/9)/2 = 91/3, so d² = 91/3.
    # Each b_j's score Σ_i (b_j − b_i)²: b=0 → 1 + 100 = 101; b=1 → 1 + 81 = 82; b=10 → 100 + 81 = 181.
    # Malicious sum: Σ_i (μ − γd − b_i)² = Σ_i (μ − b_i)² + 3γ²d² (the cross term vanishes since
    # Σ_i (μ − b_i) = 0) = 546/9 + 91γ².
    # min bound (official): 546/9 + 91γ² = 82  ⇒ γ = √((82 − 546/9)/91) = √(192/819) ≈ 0.4842.
    # max bound:            546/9 + 91γ² = 181 ⇒ γ = √((181 − 546/9)/91) = √(1083/819) ≈ 1.1499.
    ref = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    g_min, g_max = math.sqrt(192 / 819), math.sqrt(1083 / 819)
    assert g_min == pytest.approx(0.4842, abs=1e-4)
    upd, gamma = minsum(ref, "std", 10.0)  # default bound: min
    assert gamma == pytest.approx(g_min, rel=1e-4)
    assert upd.item() == pytest.approx(11 / 3 - gamma * math.sqrt(91 / 3))
    assert minsum(ref, "std", 10.0, "max")[1] == pytest.approx(g_max, rel=1e-4)


def test_minsum_bound_config():
    class D:
        num_classes, num_clients, name, input_shape = 10, 5, "x", (1, 8, 8)
        x = torch.zeros(2, 1, 8, 8)

    assert make_plan(load_config({"attack": {"kind": "minsum", "fraction": 0.4}}), D, "fedavg").minsum_bound == "min"
    plan = make_plan(load_config({"attack": {"kind": "minsum", "fraction": 0.4, "minsum_bound": "max"}}), D, "fedavg")
    assert plan.minsum_bound == "max"
    with pytest.raises(ConfigError, match="minsum_bound"):
        make_plan(load_config({"attack": {"kind": "minmax", "fraction": 0.4, "minsum_bound": "max"}}), D, "fedavg")
    with pytest.raises(ConfigError):
        load_config({"attack": {"kind": "minsum", "minsum_bound": "median"}})


def test_sign_flip_and_scaling_definitions():
    d = torch.tensor([1.0, -2.0])
    assert sign_flip(d).tolist() == [-1.0, 2.0]
    assert sign_flip(d, 4.0).tolist() == [-4.0, 8.0]


def test_collusion_hook_replaces_only_the_attackers():
    cfg = load_config({"attack": {"kind": "alie", "fraction": 0.4, "sees_benign": True}})

    class D:
        num_classes, num_clients, name, input_shape = 10, 5, "x", (1, 8, 8)
        x = torch.zeros(2, 1, 8, 8)

    plan = make_plan(cfg, D, "fedavg")
    mal = plan.malicious
    updates = [_upd(c, [float(c), 2.0 * c]) for c in range(5)]
    out = CollusionHook(plan)(updates, None, 0, None)
    benign = torch.stack([u.delta for u in updates if u.client_id not in mal])
    expected = alie(benign, 5, len(mal))
    for u in out:
        if u.client_id in mal:
            assert torch.allclose(u.delta, expected)
        else:
            assert torch.equal(u.delta, updates[u.client_id].delta)
    # inactive round: untouched
    plan.start = 5
    assert CollusionHook(plan)(updates, None, 0, None) is updates


def _exp(tiny, attack, **extra):
    cfg = load_config(tiny({"attack": attack, "data": {"partition": {"num_clients": 5}}, **extra}))
    return build_experiment(cfg)


def _job(exp, cid, round_=0):
    from fedweave.messages import Broadcast

    b = Broadcast(0, exp.initial_params, exp.initial_buffers)
    return ClientJob(cid, 0, round_, b, None, exp.train_settings(0.1))


@pytest.mark.parametrize("kind,scale", [("sign_flip", None), ("sign_flip", 3.0), ("scaling", None), ("gaussian", 0.5)])
def test_model_poisoning_on_the_client(tiny, kind, scale):
    exp = _exp(tiny, {"kind": kind, "fraction": 0.4, **({"scale": scale} if scale else {})})
    assert isinstance(exp.algorithm, AttackedClient)
    worker = Worker(exp.worker_setup())
    cid = exp.algorithm.plan.malicious[0]
    honest = _run(worker, exp.algorithm.inner, _job(exp, cid))
    got = _run(worker, exp.algorithm, _job(exp, cid))
    if kind == "sign_flip":
        assert torch.allclose(got, -(scale or 1.0) * honest)
    elif kind == "scaling":
        assert torch.allclose(got, 10.0 * honest)
    else:
        assert got.std().item() == pytest.approx(0.5, rel=0.1)
        assert abs(torch.corrcoef(torch.stack([got, honest]))[0, 1].item()) < 0.2
    # a benign client and an inactive round are untouched
    benign = next(c for c in range(5) if c not in exp.algorithm.plan.malicious)
    assert torch.equal(_run(worker, exp.algorithm, _job(exp, benign)), _run(worker, exp.algorithm.inner, _job(exp, benign)))


def _run(worker, algorithm, job):
    worker.algorithm = algorithm
    return worker.run(job).update.delta


def test_backdoor_poisons_the_attackers_batch(tiny):
    exp = _exp(tiny, {"kind": "backdoor", "fraction": 0.4, "target": 3, "poison_fraction": 0.5, "trigger": {"size": 2}})
    plan = exp.algorithm.plan
    cid = plan.malicious[0]
    view = poisoned_view(exp.data, cid, plan, counter=0)
    idx = exp.data.client_train[cid]
    n = len(idx)
    x0, y0 = exp.data.x[idx], exp.data.y[idx]
    changed = (view.x[:n] != x0).flatten(1).any(1) | (view.y[:n] != y0)
    k = int(changed.sum())
    assert k == min(round(0.5 * n), int((y0 != 3).sum()))
    assert (view.y[:n][changed] == 3).all() and (y0[changed] != 3).all()
    stamped = plan.trigger.stamp(x0[changed])
    assert torch.equal(view.x[:n][changed], stamped)
    assert torch.equal(view.y[n:], exp.data.y[exp.data.client_val[cid]])  # validation stays clean
    assert len(view.client_train[cid]) == n and all(len(view.client_train[c]) == 0 for c in range(5) if c != cid)


def test_label_flip_view(tiny):
    exp = _exp(tiny, {"kind": "label_flip", "fraction": 0.4})
    cid = exp.algorithm.plan.malicious[0]
    view = poisoned_view(exp.data, cid, exp.algorithm.plan, 0)
    n = len(exp.data.client_train[cid])
    assert torch.equal(view.y[:n], 9 - exp.data.y[exp.data.client_train[cid]])


def test_trigger_stamping_and_dba_pieces():
    t = make_trigger((1, 8, 8), size=4, offset=1, on=1.0, off=0.0, parts=4)
    region = t.region[0]
    assert region.sum() == 16 and region[3:7, 3:7].all()
    assert torch.equal(sum(p[0].int() for p in t.pieces).bool(), region)  # the pieces cover the square
    assert all(p.sum() == 4 for p in t.pieces)  # four 1x4 lines
    x = torch.full((2, 1, 8, 8), 0.5)
    s = t.stamp(x)
    assert (s[:, 0, 3, 3] == 1.0).all() and (s[:, 0, 3, 4] == 0.0).all() and (s[:, 0, 0, 0] == 0.5).all()
    one = t.stamp(x, piece=1)
    assert (one[0, 0, 4, 3:7] != 0.5).all() and (one[0, 0, 3, 3:7] == 0.5).all()
    flat = make_trigger((1, 40), size=3, offset=0)
    assert flat.region[0, -3:].all() and flat.region.sum() == 3


@pytest.mark.parametrize(
    "attack,match",
    [
        ({"kind": "backdoor", "fraction": 0.2, "target": 10}, "not a class"),
        ({"kind": "backdoor", "fraction": 0.2, "trigger": {"size": 8}}, "does not fit|needs"),
        ({"kind": "sign_flip", "fraction": 0.2, "sees_benign": True}, "sees_benign"),
        ({"kind": "label_flip", "fraction": 0.2, "source": 3, "target": 3}, "same label"),
        ({"fraction": 0.2}, "attack.kind"),
    ],
)
def test_bad_attack_configs_are_refused(tiny, attack, match):
    with pytest.raises(ConfigError, match=match):
        _exp(tiny, attack)


def test_fraction_outside_0_1_is_refused(tiny):
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="fraction"):
            load_config(tiny({"attack": {"kind": "sign_flip", "fraction": bad}}))


def test_backdoor_success_rate_is_above_the_clean_models(tiny, tmp_path):
    """40% of the clients train on triggered inputs labelled with the target, so the model
    learns the trigger; a model trained without the attack has no reason to send triggered
    non-target inputs to the target. The attacked success rate must exceed the clean model's
    (recomputed here on the same triggered inputs) by 4 sd of a rate on those n inputs."""
    from fedweave.params import FlatModel

    setup = {"data": {"partition": {"kind": "iid"}}, "model": {"hidden": [32]}, "client": {"epochs": 2},
             "schedule": {"rounds": 4, "clients_per_round": 5}}
    attack = {"attack": {"kind": "backdoor", "fraction": 0.4, "trigger": {"size": 2}}}
    res = fedweave.run(tiny({**setup, **attack}), out=tmp_path / "run")
    assert all("attack_success_rate" in r for r in res.history)
    assert res.summary["malicious_clients"] == malicious_clients(0, 5, 0.4)
    clean = fedweave.run(tiny(setup), out=tmp_path / "clean")
    exp = build_experiment(load_config(tiny({**setup, **attack})))
    plan = exp.algorithm.plan
    keep = exp.data.y_test != plan.target
    triggered = plan.trigger.stamp(exp.data.x_test[keep])  # the whole trigger on every non-target test input
    model = FlatModel(exp.model_factory(), exp.roles)
    with torch.no_grad():
        model.params.copy_(clean.params)
        model.module.eval()
        clean_rate = float((model.module(triggered).argmax(dim=1) == plan.target).double().mean())
    margin = 4 * 0.5 / math.sqrt(len(triggered))
    assert res.summary["final_attack_success_rate"] > clean_rate + margin


def test_attack_window(tiny):
    exp = _exp(tiny, {"kind": "sign_flip", "fraction": 0.4, "start_round": 2, "end_round": 3})
    plan = exp.algorithm.plan
    assert [plan.active(r) for r in range(4)] == [False, True, True, False]
    assert math.isclose(plan.s, 1.0)
