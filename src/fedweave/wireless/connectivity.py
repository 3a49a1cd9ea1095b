"""Aircraft-to-ground SIR connectivity for urban air mobility (stochastic geometry).

The spatial model of "Wireless-Enabled Asynchronous Federated Fourier Neural Network for
Turbulence Prediction in Urban Air Mobility (UAM)" (Zeng, Semiari, Saad, Bennis, IEEE
TWC 2023): ground base stations (GBSs) form a Poisson point process, aircraft fly at an
altitude along corridors, each aircraft uploads to its closest GBS, and an upload gets
through when its signal-to-interference ratio (SIR) exceeds a threshold. The paper's full
text was not available here; the equations below are derived for the geometry stated in
its abstract with the standard assumptions of the literature (Rayleigh fading, equal
transmit powers, interferers as an independent PPP), and every one of them is checked
against a Monte Carlo simulation of the same geometry (:func:`monte_carlo_connectivity`,
tests/test_uam_wireless.py).

Geometry and units (kilometres)

* GBSs: a homogeneous PPP Φ_G of density λ (GBSs per km²) on the ground.
* Aircraft: at altitude h (km). An aircraft at horizontal position x uploads to the GBS of
  Φ_G nearest to x (nearest horizontally = nearest in 3-D, every GBS being at height 0).
* Interference at the serving GBS: aircraft of other cells transmitting on the same
  resource, modelled as a PPP Φ_I of density λ_I = p·λ (p = ``activity``, the share of
  cells with a co-channel upload in progress) at altitude h, independent of Φ_G, inside
  the service area: horizontal distance at most ρ (``interference_radius_km``) from the
  serving GBS. (Ignoring that interferers sit outside the serving cell makes the model
  slightly pessimistic; a finite ρ makes the analytic result exact for a finite network.)
* Channel: power-law path loss d^(−α), α > 2, and Rayleigh fading: power gains g ~ Exp(1)
  i.i.d. per link and per attempt. Transmit powers are equal and cancel in the SIR, noise
  is neglected (interference-limited).

Results

1. Link distance. The horizontal distance R to the nearest GBS has the contact
   distribution P(R > r) = e^(−πλr²). The aircraft–GBS distance D = √(R² + h²) ≥ h has

       F_D(d) = 1 − exp(−πλ(d² − h²)),     f_D(d) = 2πλ d exp(−πλ(d² − h²)),   d ≥ h.

2. Laplace transform of the interference I = Σ_{y∈Φ_I} g_y (|y|² + h²)^(−α/2) (the
   probability generating functional of the PPP, with E[e^(−s g u^(−β))] = 1/(1 + s u^(−β))
   and polar coordinates u = |y|² + h², β = α/2):

       L_I(s) = E[e^(−sI)] = exp(−πλ_I ∫_{h²}^{h²+ρ²} du / (1 + u^β / s)),

   evaluated in closed form with G(a) = ∫_a^∞ du / (1 + u^β/s)
   = s a^(1−β)/(β−1) · ₂F₁(1, 1 − 1/β; 2 − 1/β; −s a^(−β)) as G(h²) − G(h² + ρ²)
   (ρ = ∞: the second term is 0).

3. Connectivity probability. With S = g₀ D^(−α), g₀ ~ Exp(1):
   P(SIR > θ) = P(g₀ > θ D^α I) = E_D[L_I(θ D^α)], i.e.

       P_c(θ) = ∫_h^∞ L_I(θ d^α) f_D(d) dd = E_V[ L_I(θ (h² + V/(πλ))^(α/2)) ],  V ~ Exp(1),

   the second form (v = πλ(d² − h²)) computed by Gauss–Laguerre quadrature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import hyp2f1

from ..core.errors import ConfigError

#: Allowed ranges (inclusive unless marked open), checked by :meth:`ChannelParams.check`.
RANGES = {
    "gbs_density": "(0, 1000] GBSs per km²",
    "altitude_km": "(0, 10] km",
    "path_loss_exponent": "(2, 8] (open at 2: the interference of an infinite plane diverges at α ≤ 2)",
    "sir_threshold_db": "[-30, 40] dB",
    "activity": "(0, 1]",
    "interference_radius_km": "(0, 1000] km",
}


@dataclass(frozen=True)
class ChannelParams:
    """The spatial model's parameters (km units; see the module docstring)."""

    gbs_density: float = 1.0  # λ, GBSs per km²
    altitude_km: float = 0.3  # h: corridors at ~1000 ft
    path_loss_exponent: float = 3.0  # α
    sir_threshold_db: float = 0.0  # θ in dB
    activity: float = 0.5  # p: λ_I = p λ
    interference_radius_km: float = 10.0  # ρ: the service area around a GBS

    @property
    def theta(self) -> float:
        return 10.0 ** (self.sir_threshold_db / 10.0)

    @property
    def interferer_density(self) -> float:
        return self.activity * self.gbs_density

    def check(self) -> "ChannelParams":
        """Raise ConfigError naming the first parameter outside its allowed range."""
        values = {
            "gbs_density": (self.gbs_density, 0.0, 1000.0, True),
            "altitude_km": (self.altitude_km, 0.0, 10.0, True),
            "path_loss_exponent": (self.path_loss_exponent, 2.0, 8.0, True),
            "sir_threshold_db": (self.sir_threshold_db, -30.0, 40.0, False),
            "activity": (self.activity, 0.0, 1.0, True),
            "interference_radius_km": (self.interference_radius_km, 0.0, 1000.0, True),
        }
        for name, (value, low, high, open_low) in values.items():
            ok = isinstance(value, (int, float)) and math.isfinite(value) and value <= high
            ok = ok and (value > low if open_low else value >= low)
            if not ok:
                raise ConfigError(
                    f"UAM wireless parameter system.uam.{name}={value!r} is out of range; allowed: {RANGES[name]}."
                )
        return self


# -- 1. link distance ----------------------------------------------------------------------


def distance_cdf(d, params: ChannelParams) -> np.ndarray:
    """F_D(d) = 1 − exp(−πλ(d² − h²)) for d ≥ h, 0 below."""
    d = np.asarray(d, dtype=np.float64)
    h2 = params.altitude_km**2
    return np.where(d >= params.altitude_km, -np.expm1(-math.pi * params.gbs_density * (d * d - h2)), 0.0)


def distance_pdf(d, params: ChannelParams) -> np.ndarray:
    """f_D(d) = 2πλ d exp(−πλ(d² − h²)) for d ≥ h, 0 below."""
    d = np.asarray(d, dtype=np.float64)
    lam, h2 = params.gbs_density, params.altitude_km**2
    return np.where(d >= params.altitude_km, 2 * math.pi * lam * d * np.exp(-math.pi * lam * (d * d - h2)), 0.0)


# -- 2. Laplace transform of the interference ----------------------------------------------


def _tail_integral(a: np.ndarray, s: np.ndarray, beta: float) -> np.ndarray:
    """G(a) = ∫_a^∞ du / (1 + u^β/s) = s a^(1−β)/(β−1) ₂F₁(1, 1−1/β; 2−1/β; −s a^(−β))."""
    b = 1.0 - 1.0 / beta
    return s * a ** (1.0 - beta) / (beta - 1.0) * hyp2f1(1.0, b, b + 1.0, -s * a ** (-beta))


def interference_laplace(s, params: ChannelParams) -> np.ndarray:
    """L_I(s) = exp(−πλ_I [G(h²) − G(h² + ρ²)]) (module docstring, result 2)."""
    s = np.asarray(s, dtype=np.float64)
    beta = params.path_loss_exponent / 2.0
    a0 = params.altitude_km**2
    a1 = a0 + params.interference_radius_km**2
    integral = _tail_integral(np.full_like(s, a0), s, beta) - _tail_integral(np.full_like(s, a1), s, beta)
    return np.exp(-math.pi * params.interferer_density * integral)


# -- 3. connectivity probability -----------------------------------------------------------

_LAGUERRE = np.polynomial.laguerre.laggauss(80)


def connectivity_probability(params: ChannelParams) -> float:
    """P_c(θ) = E_V[L_I(θ (h² + V/(πλ))^(α/2))], V ~ Exp(1) (module docstring, result 3)."""
    params.check()
    nodes, weights = _LAGUERRE
    d2 = params.altitude_km**2 + nodes / (math.pi * params.gbs_density)
    s = params.theta * d2 ** (params.path_loss_exponent / 2.0)
    return float(np.sum(weights * interference_laplace(s, params)))


# -- Monte Carlo of the same geometry ------------------------------------------------------


def _ppp_in_disk(rng: np.random.Generator, density: float, radius: float, n: int):
    """n independent PPPs of ``density`` in a disk: (owner index, x, y) of all points."""
    counts = rng.poisson(density * math.pi * radius * radius, size=n)
    owner = np.repeat(np.arange(n), counts)
    r = radius * np.sqrt(rng.random(owner.size))
    phi = 2 * math.pi * rng.random(owner.size)
    return owner, counts, r * np.cos(phi), r * np.sin(phi)


def sample_link_distance(params: ChannelParams, n: int, rng: np.random.Generator) -> np.ndarray:
    """Aircraft–GBS distances of n independent layouts: the GBS PPP drawn point by point
    in a disk around the aircraft (radius with P(no GBS inside) < 1e-12), nearest taken."""
    lam = params.gbs_density
    radius = math.sqrt(12 * math.log(10) / (math.pi * lam)) * 1.2
    owner, counts, x, y = _ppp_in_disk(rng, lam, radius, n)
    r2 = np.full(n, np.inf)
    np.minimum.at(r2, owner, x * x + y * y)
    return np.sqrt(r2 + params.altitude_km**2)


def monte_carlo_connectivity(params: ChannelParams, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """Simulated P(SIR > θ) and its standard error from n independent snapshots: a GBS
    layout (its nearest point gives D), interfering aircraft drawn as a PPP of density
    λ_I at altitude h within ρ of the serving GBS, Rayleigh gains on every link."""
    params.check()
    d = sample_link_distance(params, n, rng)
    owner, counts, x, y = _ppp_in_disk(rng, params.interferer_density, params.interference_radius_km, n)
    dist2 = x * x + y * y + params.altitude_km**2
    gains = rng.exponential(size=owner.size)
    interference = np.bincount(owner, weights=gains * dist2 ** (-params.path_loss_exponent / 2.0), minlength=n)
    signal = rng.exponential(size=n) * d ** (-params.path_loss_exponent)
    success = signal > params.theta * interference
    p = float(success.mean())
    return p, math.sqrt(max(p * (1 - p), 1e-12) / n)


__all__ = [
    "ChannelParams",
    "RANGES",
    "connectivity_probability",
    "distance_cdf",
    "distance_pdf",
    "interference_laplace",
    "monte_carlo_connectivity",
    "sample_link_distance",
]
