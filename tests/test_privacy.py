"""DP-FedAvg: clipping, fixed-denominator noise, the accountant, and refused combinations."""

from __future__ import annotations

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from fedweave.messages import Update
from fedweave.methods.base import ServerContext
from fedweave.privacy import DPStrategy, dp_epsilon, dp_noise_std

pytest.importorskip("opacus")

DP = {"schedule": {"sampling": "poisson", "sampling_rate": 0.5, "rounds": 3},
      "privacy": {"dp": {"clip": 0.5, "noise_multiplier": 1.0, "delta": 1e-5}}}


def test_epsilon_grows_with_rounds_and_matches_the_accountant():
    from opacus.accountants import RDPAccountant

    eps = [dp_epsilon(1.1, 0.01, t, 1e-5) for t in (1, 10, 100, 1000)]
    assert eps == sorted(eps) and eps[0] > 0
    acc = RDPAccountant()
    for _ in range(100):
        acc.step(noise_multiplier=1.1, sample_rate=0.01)
    assert dp_epsilon(1.1, 0.01, 100, 1e-5) == pytest.approx(acc.get_epsilon(delta=1e-5))
    assert dp_epsilon(1.1, 0.01, 0, 1e-5) == 0.0
    assert dp_epsilon(0.0, 0.01, 5, 1e-5) == float("inf")


def _ctx(n, p):
    class Clock:
        def now(self):
            return 0.0

    return ServerContext(spec=None, num_clients=n, client_sizes=None, clock=Clock(), seed=0)


def _dp_strategy(clip, sigma, q, p):
    from fedweave.aggregate import make_server_optimizer
    from fedweave.methods.stages import StagedStrategy

    inner = StagedStrategy("fedavg", "size", "mean", make_server_optimizer("replace"))
    s = DPStrategy(inner, clip, sigma, q, seed=0)
    state = s.init(torch.zeros(p), torch.zeros(0), _ctx(100, p))
    return s, state


def test_noise_std_is_sigma_c_over_qn():
    s, state = _dp_strategy(clip=2.0, sigma=1.5, q=0.1, p=200_000)
    assert dp_noise_std(2.0, 1.5, 0.1, 100) == pytest.approx(1.5 * 2.0 / (0.1 * 100))
    out = s.aggregate([], state, _ctx(100, 200_000))  # empty cohort: noise only
    assert out.params.std().item() == pytest.approx(0.3, rel=0.01)
    assert abs(out.params.mean().item()) < 0.01
    # the noise is keyed by the round: deterministic
    s2, st2 = _dp_strategy(clip=2.0, sigma=1.5, q=0.1, p=200_000)
    assert torch.equal(s2.aggregate([], st2, _ctx(100, 200_000)).params, out.params)


def test_clipped_sum_over_the_expected_cohort():
    s, state = _dp_strategy(clip=1.0, sigma=0.0, q=0.5, p=2)
    ups = [Update(i, 0, torch.tensor(d), None, 10 * (i + 1)) for i, d in enumerate([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]])]
    out = s.aggregate(ups, state, _ctx(4, 2))  # qN = 2, uniform weights, norms clipped to 1
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4]) + torch.tensor([0.0, -1.0])) / 2
    assert torch.allclose(out.params, expected)


def test_dp_run_reports_epsilon_and_clips_uploads(tiny, tmp_path):
    from fedweave.sim.engine import Observer

    res = fedweave.run(tiny(DP), out=tmp_path / "dp")
    eps = [r["epsilon"] for r in res.history]
    assert eps == sorted(eps) and res.summary["epsilon"] == pytest.approx(dp_epsilon(1.0, 0.5, 3, 1e-5))
    exp = build_experiment(load_config(tiny(DP)))
    norms = []

    class Spy(Observer):
        def on_upload(self, update, round_):
            norms.append(float(update.delta.norm()))

    exp.observers.append(Spy())
    from fedweave.experiment import _execute
    from fedweave.rundir import RunDirectory

    rd = RunDirectory(tmp_path / "dp2")
    rd.create(exp.config.to_yaml())
    again = _execute(exp, rd, None, None)
    assert norms and max(norms) <= 0.5 + 1e-5
    assert torch.equal(again.params, res.params)  # deterministic, noise included


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"schedule": {"sampling": "uniform"}}, "poisson"),
        ({"method": {"name": "median"}}, "combiner 'median'"),
        ({"method": {"name": "scaffold"}}, "not a clipped sum"),
        ({"schedule": {"mode": "buffered", "sampling": "uniform"}}, "buffered"),
        ({"model": {"name": "resnet", "norm": "batch", "width": 4}}, "shared float buffers"),
        ({"model": {"name": "resnet", "norm": "group", "width": 4}}, None),
        ({"schedule": {"over_select": 0.5}}, "over_select"),
        ({"method": {"name": "fedavg", "weighting": "loss"}}, "weighting 'loss'"),
        ({"method": {"name": "feddisco"}}, "weighting 'disco'"),
        ({"method": {"name": "fedavg", "weighting": "uniform"}}, None),
    ],
)
def test_uncovered_combinations_are_refused(tiny, extra, match):
    cfg = tiny(DP)
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    if match is None:  # GroupNorm keeps no shared float buffers; uniform weights: accepted
        build_experiment(load_config(cfg))
        return
    with pytest.raises(ConfigError, match=match):
        build_experiment(load_config(cfg))


def test_dp_needs_both_clip_and_noise(tiny):
    with pytest.raises(ConfigError, match="both"):
        load_config(tiny({"privacy": {"dp": {"clip": 1.0}}}))


# -- epsilon against an independent value -----------------------------------------------------------
# With sampling rate q = 1 every round is the plain Gaussian mechanism on a sum of sensitivity
# C with noise sigma*C, whose Renyi DP at order a is a / (2 sigma^2) in closed form (Mironov
# 2017, Prop. 7); T rounds compose additively: T a / (2 sigma^2). The conversion to (eps,
# delta) is the one the accountant states it uses (Opacus's RDP accountant): Balle et al.
# 2020, Thm. 21, eps = rdp(a) + log((a-1)/a) - (log delta + log a)/(a-1), minimised over
# Opacus's default orders 1.1, 1.2, ..., 10.9 and 12, ..., 63.

ORDERS = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))


def _epsilon_q1(sigma: float, rounds: int, delta: float) -> float:
    import math

    return min(rounds * a / (2 * sigma**2) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
               for a in ORDERS)


@pytest.mark.parametrize("sigma,rounds", [(1.0, 3), (1.5, 10), (4.0, 50)])
def test_epsilon_at_q1_is_the_gaussian_mechanisms_closed_form(sigma, rounds):
    assert dp_epsilon(sigma, 1.0, rounds, 1e-5) == pytest.approx(_epsilon_q1(sigma, rounds, 1e-5), rel=1e-9)


def test_a_full_participation_run_reports_the_closed_form_epsilon(tiny, tmp_path):
    cfg = tiny({"schedule": {"sampling": "poisson", "sampling_rate": 1.0, "rounds": 3, "clients_per_round": 5},
                "privacy": {"dp": {"clip": 0.5, "noise_multiplier": 2.0, "delta": 1e-4}}})
    res = fedweave.run(cfg, out=tmp_path / "dp")
    assert [r["epsilon"] for r in res.history] == pytest.approx([_epsilon_q1(2.0, t, 1e-4) for t in (1, 2, 3)], rel=1e-9)
    assert res.summary["epsilon"] == pytest.approx(_epsilon_q1(2.0, 3, 1e-4), rel=1e-9)
