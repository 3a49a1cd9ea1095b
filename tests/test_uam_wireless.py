"""UAM wireless connectivity (fedweave.wireless.connectivity, fedweave.sim.uam): the
analytic distance law, interference Laplace transform and SIR connectivity probability
against Monte Carlo of the same geometry and against closed forms derived by hand; the
uam_wireless fleet's uploads failing at the rate the connectivity probability predicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.rng import numpy_rng
from fedweave.sim.devices import make_fleet
from fedweave.sim.uam import UAMFleet, channel_params
from fedweave.wireless.connectivity import (
    ChannelParams,
    connectivity_probability,
    distance_cdf,
    distance_pdf,
    interference_laplace,
    monte_carlo_connectivity,
    sample_link_distance,
)


@pytest.mark.parametrize("density", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("threshold_db", [-5.0, 0.0, 5.0])
def test_connectivity_matches_monte_carlo(density, threshold_db):
    params = ChannelParams(gbs_density=density, sir_threshold_db=threshold_db)
    analytic = connectivity_probability(params)
    simulated, stderr = monte_carlo_connectivity(params, 20000, numpy_rng(7, "test-mc", int(density * 10),
                                                                         int(threshold_db + 10)))
    assert abs(analytic - simulated) < 4 * stderr + 1e-3, (analytic, simulated, stderr)


def test_connectivity_reduces_to_the_planar_closed_form():
    # h → 0, ρ → ∞: P_c = ∫ 2πλr e^(−πλr²) e^(−πλ_I r² θ^δ πδ/sin(πδ)) dr = 1 / (1 + p θ^δ πδ/sin(πδ)),
    # δ = 2/α (Rayleigh fading, interferers a PPP of density pλ): derived by hand from ∫_0^∞ dv/(1+v^(1/δ)).
    for alpha, theta_db, p in [(4.0, 0.0, 0.5), (3.0, 3.0, 1.0), (4.0, -3.0, 0.2)]:
        params = ChannelParams(gbs_density=1.0, altitude_km=1e-6, path_loss_exponent=alpha,
                               sir_threshold_db=theta_db, activity=p, interference_radius_km=1000.0)
        delta = 2 / alpha
        expected = 1 / (1 + p * params.theta**delta * math.pi * delta / math.sin(math.pi * delta))
        assert connectivity_probability(params) == pytest.approx(expected, rel=2e-3)


def test_laplace_transform_matches_numerical_integral():
    params = ChannelParams(gbs_density=2.0, path_loss_exponent=3.5, activity=0.7, interference_radius_km=5.0)
    h2, beta = params.altitude_km**2, params.path_loss_exponent / 2
    for s in [1e-3, 0.1, 2.0, 50.0]:
        integral = quad(lambda u: 1 / (1 + u**beta / s), h2, h2 + 25.0, limit=200, epsabs=1e-13)[0]
        expected = math.exp(-math.pi * params.interferer_density * integral)
        assert float(interference_laplace(s, params)) == pytest.approx(expected, rel=1e-8)


def test_distance_law_matches_sampled_nearest_gbs():
    params = ChannelParams(gbs_density=1.5, altitude_km=0.4)
    d = np.sort(sample_link_distance(params, 20000, numpy_rng(3, "test-dist")))
    assert d.min() >= params.altitude_km
    # Kolmogorov–Smirnov distance below the 0.1% critical value 1.95/√n
    empirical = np.arange(1, d.size + 1) / d.size
    assert np.abs(empirical - distance_cdf(d, params)).max() < 1.95 / math.sqrt(d.size)
    grid = np.linspace(params.altitude_km, 2.0, 4001)
    assert np.trapezoid(distance_pdf(grid, params), grid) == pytest.approx(float(distance_cdf(2.0, params)), abs=1e-6)


def _fleet_cfg(**uam):
    sets = ["system.profile=uam_wireless"] + [f"system.uam.{k}={v}" for k, v in uam.items()]
    return load_config(None, sets).system


@pytest.mark.parametrize("density,threshold_db", [(0.5, 0.0), (2.0, 3.0)])
def test_fleet_attempts_fail_at_the_predicted_rate(density, threshold_db):
    system = _fleet_cfg(gbs_density=density, sir_threshold_db=threshold_db)
    p_c = connectivity_probability(channel_params(system.uam))
    rates = []
    for seed in range(30):  # a GBS layout and corridors per seed; rates averaged over layouts
        fleet = make_fleet(system, 8, seed)
        wins = [fleet.attempt_succeeds(k, float(t), numpy_rng(seed, "test-attempt", k, i))
                for i, t in enumerate(np.linspace(0.0, 3600.0, 40)) for k in range(8)]
        rates.append(np.mean(wins))
    rates = np.array(rates)
    stderr = rates.std(ddof=1) / math.sqrt(rates.size)
    assert abs(rates.mean() - p_c) < 4 * stderr, (rates.mean(), p_c, stderr)


def test_upload_time_is_retries_plus_one_attempt_and_deterministic():
    system = _fleet_cfg(sir_threshold_db=3.0, retry_s=2.0)
    fleet = make_fleet(system, 6, 11)
    assert isinstance(fleet, UAMFleet)
    attempt_s = system.latency_s + 50_000 / (system.uplink_mbps * 1e6 / 8)
    totals = []
    for cid in range(6):
        for job in range(20):
            before = fleet.failures
            took = fleet.upload_s(cid, 100.0 * job, 50_000, job)
            failed = fleet.failures - before
            assert took == pytest.approx(failed * (attempt_s + 2.0) + attempt_s)
            totals.append(took)
    again = make_fleet(system, 6, 11)
    assert [again.upload_s(cid, 100.0 * job, 50_000, job) for cid in range(6) for job in range(20)] == totals
    assert fleet.failures > 0 and fleet.attempts > fleet.failures


def test_aircraft_fly_back_and_forth_along_their_corridor():
    fleet = make_fleet(_fleet_cfg(corridors=3, speed_kmh=360.0), 5, 0)
    c = fleet.corridors
    a, b = c.ends[c.corridor_of[4]]
    length = float(np.hypot(*(b - a)))
    round_trip_s = 2 * length / 0.1  # 360 km/h = 0.1 km/s
    for t in [0.0, 17.0, 333.0]:
        p = c.position(4, t)
        assert np.allclose(p, c.position(4, t + round_trip_s))
        # on the segment a–b
        along = np.dot(p - a, b - a) / length**2
        assert -1e-9 <= along <= 1 + 1e-9
        assert np.linalg.norm(a + along * (b - a) - p) < 1e-9


@pytest.mark.parametrize("key,value", [("gbs_density", 0), ("gbs_density", -1), ("path_loss_exponent", 2.0),
                                       ("path_loss_exponent", 9), ("sir_threshold_db", 45), ("activity", 0)])
def test_bad_channel_parameters_are_config_errors(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["system.profile=uam_wireless", f"system.uam.{key}={value}"])
    assert f"system.uam.{key}" in str(err.value)
    with pytest.raises(ConfigError) as err:
        ChannelParams(**{key: value}).check()
    assert "allowed" in str(err.value) and key in str(err.value)


def test_hopeless_channel_is_refused_before_running():
    system = _fleet_cfg(sir_threshold_db=40.0, gbs_density=50.0, max_attempts=100)
    with pytest.raises(ConfigError, match="connectivity probability"):
        make_fleet(system, 4, 0)
