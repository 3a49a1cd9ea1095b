"""Robust combiners as stages and methods: config-time checks, runtime fallback, and the
fast Bulyan window against the reference computation."""

from __future__ import annotations

import sys

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.methods import build_method
from fedweave.methods.robust import RobustCombiner, requirement

krum_module = sys.modules["fedweave.aggregate.krum"]


def test_krum_chooses_from_the_honest_cluster_when_attackers_sit_far_away():
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(8, 20, generator=gen) * 0.1 + 1.0
    attackers = torch.randn(3, 20, generator=gen) * 0.1 + 50.0
    deltas = torch.cat([attackers, honest])  # attackers first: order does not help them
    chosen = RobustCombiner("krum", f=3)(deltas, torch.ones(11), None, None)
    assert any(torch.equal(chosen, h) for h in honest)
    two = deltas[1:]  # 2 attackers among K = 10: every defense assuming f = 2 stays honest
    for kind in ("krum", "multikrum", "bulyan", "median", "trimmed_mean"):
        f = 1 if kind == "bulyan" else 2  # Bulyan with K = 10 tolerates f = 1 (its trimming still holds here)
        out = RobustCombiner(kind, f=f)(two, torch.ones(10), None, None)
        assert (out - 1.0).abs().max() < 0.5, kind
    assert (deltas.mean(0) - 1.0).abs().max() > 10  # the mean does not


def test_robust_combiners_ignore_weights_and_normclip_uses_them():
    d = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    w1, w2 = torch.ones(5), torch.tensor([1.0, 1.0, 1.0, 100.0, 100.0])
    for kind in ("median", "trimmed_mean", "krum", "multikrum", "bulyan"):
        c = RobustCombiner(kind, f=0 if kind == "bulyan" else 1)
        assert torch.equal(c(d, w1, None, None), c(d, w2, None, None)), kind
    nc = RobustCombiner("normclip", clip_norm=1.0)
    assert nc(d, w1, None, None).item() == pytest.approx(0.8)  # rows clipped to 0,1,1,1,1
    assert nc(d, w2, None, None).item() == pytest.approx(202 / 203)
    # default bound: the median norm (2.0)
    assert RobustCombiner("normclip")(d, w1, None, None).item() == pytest.approx((0 + 1 + 2 + 2 + 2) / 5)


def test_requirements():
    assert requirement("krum", 2, 6) and not requirement("krum", 2, 7)
    assert requirement("bulyan", 2, 10) and not requirement("bulyan", 2, 11)
    assert requirement("median", 3, 6) and not requirement("median", 3, 7)
    assert requirement("trimmed_mean", 2, 10, beta=0.1)  # trims 1 < f = 2
    assert not requirement("trimmed_mean", 2, 10)  # trims f = 2 per side
    assert requirement("trimmed_mean", 0, 4, beta=0.49) is None


@pytest.mark.parametrize(
    "method,k,match",
    [
        ({"name": "krum", "num_malicious": 4}, 10, "Krum needs K > 2f"),
        ({"name": "bulyan", "num_malicious": 2}, 10, "Bulyan needs K >= 4f"),
        ({"name": "fedavg", "combiner": "multikrum", "num_malicious": 4}, 10, "Krum"),
        ({"name": "median", "num_malicious": 5}, 10, "median needs"),
        ({"name": "trimmed_mean", "num_malicious": 2, "trim_beta": 0.1}, 10, "trims"),
        ({"name": "fedavg", "num_malicious": 1}, 10, "unknown parameter"),
        ({"name": "normclip", "num_malicious": 1}, 10, "num_malicious"),
    ],
)
def test_defense_assumptions_are_checked_at_config_time(method, k, match):
    with pytest.raises(ConfigError, match=match):
        build_method(load_config({"method": method, "schedule": {"clients_per_round": k}}))


def test_combiner_stage_composes_with_weighting_and_server_optimizer(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "fedavgm", "combiner": "trimmed_mean", "trim_beta": 0.2},
                             "schedule": {"clients_per_round": 5}, "data": {"partition": {"num_clients": 5}}}),
                       out=tmp_path / "r")
    assert res.status == "completed"
    strategy, _ = build_method(load_config({"method": {"name": "fedadam", "combiner": "krum", "num_malicious": 1}}))
    assert strategy.combiner.kind == "krum" and strategy.combiner.f == 1


# Under attack, on a problem where a defense must matter: 11 iid digits clients, all in every
# round, 2 of them (fraction 0.2) upload Gaussian noise N(0, 10^2 I) instead of their update.
# FedAvg's mean then moves every weight by noise of sd 2/11 * 10 = 1.8 per round, far above the
# scale of the weights it learns (~0.1-0.3): it cannot learn. Each defense removes or bounds the
# two outliers (f = 2: K = 11 meets Krum's K > 2f + 2 and Bulyan's K >= 4f + 3; normclip scales
# them down to the median norm) and so trains on the 9 honest updates. The margin is 4 sd of a
# test accuracy (digits' 1797 examples, test_fraction 0.2: n = 359, sd <= 0.5 / sqrt(n) = 0.026).
MARGIN = 4 * 0.5 / round(0.2 * 1797) ** 0.5
UNDER_ATTACK = {"data": {"partition": {"kind": "iid", "num_clients": 11}}, "model": {"hidden": [32]},
                "client": {"epochs": 2}, "schedule": {"rounds": 8, "clients_per_round": 11}, "eval": {"every": 8},
                "attack": {"kind": "gaussian", "fraction": 0.2, "scale": 10.0}}


_FEDAVG_UNDER_ATTACK: list[float] = []  # run once per session, shared by the six cases


@pytest.fixture
def fedavg_under_attack(tiny, tmp_path_factory):
    if not _FEDAVG_UNDER_ATTACK:
        res = fedweave.run(tiny(UNDER_ATTACK), out=tmp_path_factory.mktemp("robust") / "fedavg")
        _FEDAVG_UNDER_ATTACK.append(res.history[-1]["accuracy"])
    return _FEDAVG_UNDER_ATTACK[0]


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum", "bulyan", "normclip"])
def test_each_robust_method_beats_fedavg_under_attack(tiny, tmp_path, name, fedavg_under_attack):
    extra = {} if name == "normclip" else {"num_malicious": 2}
    res = fedweave.run(tiny({**UNDER_ATTACK, "method": {"name": name, **extra}}), out=tmp_path / name)
    assert res.status == "completed" and res.history[-1]["robust_skipped_rounds"] == 0
    assert res.summary["malicious_clients"] and len(res.summary["malicious_clients"]) == 2
    assert res.history[-1]["accuracy"] > fedavg_under_attack + MARGIN


def test_a_cohort_too_small_is_not_aggregated():
    class S:
        extra = {}

    state = S()
    comb = RobustCombiner("krum", f=2)
    comb.init(state, None)
    out = comb(torch.ones(5, 3), torch.ones(5), state, None)  # K = 5 <= 2f + 2
    assert torch.equal(out, torch.zeros(3)) and state.extra["robust_skipped"] == 1
    assert comb.metrics(state) == {"robust_skipped_rounds": 1}


@pytest.mark.parametrize("block", [1 << 20, 7])
def test_fast_bulyan_window_matches_the_reference_with_ties(block, monkeypatch):
    monkeypatch.setattr(krum_module, "_BLOCK_ENTRIES", block)
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        theta = int(torch.randint(3, 14, (1,), generator=g))
        beta = int(torch.randint(1, theta + 1, (1,), generator=g))
        x = torch.randint(-3, 4, (theta, 40), generator=g).double()  # many ties
        fast = krum_module.mean_closest_to_median(x, beta)
        ref = krum_module._mean_closest_to_median_by_sorting(x, beta)
        assert torch.allclose(fast, ref, atol=1e-12), (seed, theta, beta)
        x = torch.randn(theta, 40, generator=g)
        assert torch.allclose(krum_module.mean_closest_to_median(x, beta),
                              krum_module._mean_closest_to_median_by_sorting(x, beta), atol=1e-5)


def test_numpy_sort_path_matches_torch_sort():
    from fedweave.aggregate.coordinate import sort_rows_, sorted_rows

    x = torch.randn(9, 1000)
    assert torch.equal(sorted_rows(x), x.sort(dim=0).values)
    assert torch.equal(sorted_rows(x.T.contiguous().T), x.sort(dim=0).values)  # strided input
    y = x.clone()
    assert sort_rows_(y) is y and torch.equal(y, x.sort(dim=0).values)
    g = x.clone().requires_grad_(True)
    assert torch.equal(sorted_rows(g).detach(), x.sort(dim=0).values)
