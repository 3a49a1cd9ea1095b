"""The ``uam_wireless`` device profile: aircraft on corridors uploading over an SIR channel.

The system of "Wireless-Enabled Asynchronous Federated Fourier Neural Network for
Turbulence Prediction in Urban Air Mobility (UAM)" (Zeng et al., IEEE TWC 2023): every
client is an aircraft; its uploads go to the closest ground base station (GBS) and get
through only when the signal-to-interference ratio exceeds the threshold, so when an
update arrives — and hence its staleness — is decided by the channel.

World (``system.uam``, km; all seeded from ``(data.seed, "uam", ...)``)

* GBSs: one realisation of a PPP of density ``gbs_density`` over the served square
  [0, ``area_km``]² widened by a margin m = 4/√λ on every side (P(the nearest GBS lies
  beyond the margin) ≤ e^(−16π)), fixed for the whole run.
* Corridors: ``corridors`` straight routes between aerodromes whose end points are drawn
  uniformly in the square (length at least area/3). Aircraft k flies corridor
  k mod ``corridors`` back and forth at ``speed_kmh``, starting at a seeded point of its
  round trip, at altitude ``altitude_km``.
* Upload attempt at virtual time t by aircraft k: its position x(t), the GBS g nearest
  to x(t) and D = √(|x − g|² + h²); interfering aircraft drawn afresh as a PPP of density
  ``activity`` × λ within ``interference_radius_km`` of g; Rayleigh gains on every link.
  Success iff g₀ D^(−α) > θ Σ g_y d_y^(−α) — exactly the snapshot whose probability,
  averaged over positions, :func:`fedweave.wireless.connectivity.connectivity_probability`
  gives. The randomness of attempt a of the client's job j comes from
  ``(seed, "uam-attempt", k, j, a)``, so a run is reproducible whatever the executor.
* Timing: an attempt lasts latency + bytes / uplink (``system.latency_s``,
  ``system.uplink_mbps``); after a failure the aircraft waits ``retry_s`` and tries
  again from where it has flown to. The upload time the engine sees is the sum. An upload
  that fails ``max_attempts`` times is an error (the configuration is asked up front
  whether that can be expected).

Compute and download times are those of the ``uniform`` profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import ConfigError, DivergedError
from ..core.rng import numpy_rng
from ..wireless.connectivity import ChannelParams, connectivity_probability
from .devices import MBPS, DeviceFleet, DeviceProfile, register_fleet


def channel_params(uam_cfg) -> ChannelParams:
    """The channel parameters of a ``system.uam`` section (range-checked)."""
    return ChannelParams(
        gbs_density=uam_cfg.gbs_density,
        altitude_km=uam_cfg.altitude_km,
        path_loss_exponent=uam_cfg.path_loss_exponent,
        sir_threshold_db=uam_cfg.sir_threshold_db,
        activity=uam_cfg.activity,
        interference_radius_km=uam_cfg.interference_radius_km,
    ).check()


@dataclass
class Corridors:
    """Corridor end points ``[C, 2, 2]`` and each aircraft's corridor and start phase."""

    ends: np.ndarray
    corridor_of: np.ndarray  # [K]
    phase: np.ndarray  # [K], fraction of the round trip at t = 0
    speed_kms: float

    def position(self, aircraft: int, t: float) -> np.ndarray:
        """Horizontal position (km) of ``aircraft`` at virtual time ``t`` (back and forth)."""
        a, b = self.ends[self.corridor_of[aircraft]]
        length = float(np.hypot(*(b - a)))
        s = (self.phase[aircraft] * 2 * length + self.speed_kms * t) % (2 * length)
        along = s if s <= length else 2 * length - s
        return a + (b - a) * (along / length)


def make_corridors(num_aircraft: int, num_corridors: int, area_km: float, speed_kmh: float,
                   rng: np.random.Generator) -> Corridors:
    ends = np.empty((num_corridors, 2, 2))
    for c in range(num_corridors):
        while True:  # aerodromes at least area/3 apart
            pts = rng.uniform(0.0, area_km, size=(2, 2))
            if np.hypot(*(pts[1] - pts[0])) >= area_km / 3:
                break
        ends[c] = pts
    corridor_of = np.arange(num_aircraft) % num_corridors
    return Corridors(ends, corridor_of, rng.random(num_aircraft), speed_kmh / 3600.0)


def make_gbs_layout(params: ChannelParams, area_km: float, rng: np.random.Generator) -> np.ndarray:
    """One PPP realisation ``[M, 2]`` over the area widened by 4/√λ on each side."""
    margin = 4.0 / math.sqrt(params.gbs_density)
    side = area_km + 2 * margin
    count = rng.poisson(params.gbs_density * side * side)
    return rng.uniform(-margin, area_km + margin, size=(max(count, 1), 2))


@dataclass
class UAMFleet(DeviceFleet):
    """A fleet whose upload times come from retried attempts over the SIR channel."""

    channel: ChannelParams = field(default_factory=ChannelParams)
    gbs: np.ndarray = field(default_factory=lambda: np.zeros((1, 2)))
    corridors: Corridors | None = None
    retry_s: float = 1.0
    max_attempts: int = 100000
    attempts: int = 0  # statistics of this process (not checkpointed)
    failures: int = 0

    def attempt_succeeds(self, aircraft: int, t: float, rng: np.random.Generator) -> bool:
        """One upload attempt at time ``t`` (module docstring): SIR > θ?"""
        p = self.channel
        pos = self.corridors.position(aircraft, t)
        diff = self.gbs - pos
        nearest = int(np.argmin(np.einsum("ij,ij->i", diff, diff)))
        d2 = float(diff[nearest] @ diff[nearest]) + p.altitude_km**2
        radius = p.interference_radius_km
        n = rng.poisson(p.interferer_density * math.pi * radius * radius)
        r2 = radius * radius * rng.random(n)  # squared horizontal distances, uniform in the disk
        beta = p.path_loss_exponent / 2.0
        interference = float(np.sum(rng.exponential(size=n) * (r2 + p.altitude_km**2) ** (-beta)))
        signal = rng.exponential() * d2 ** (-beta)
        return signal > p.theta * interference

    def upload_s(self, client_id: int, start_s: float, num_bytes: int, counter: int = 0) -> float:
        attempt_s = self.profiles[client_id].upload_s(num_bytes)
        t = start_s
        for attempt in range(self.max_attempts):
            self.attempts += 1
            rng = numpy_rng(self.seed, "uam-attempt", client_id, counter, attempt)
            if self.attempt_succeeds(client_id, t, rng):
                return t + attempt_s - start_s
            self.failures += 1
            t += attempt_s + self.retry_s
        raise DivergedError(
            f"Aircraft {client_id} failed {self.max_attempts} upload attempts in a row (system.uam.max_attempts); "
            "the channel almost never connects: lower system.uam.sir_threshold_db or change the GBS density."
        )


def make_uam_fleet(system_cfg, num_clients: int, seed: int, num_params: int = 0) -> UAMFleet:
    s, u = system_cfg, system_cfg.uam
    params = channel_params(u)
    p_c = connectivity_probability(params)
    if p_c * u.max_attempts < 20:
        raise ConfigError(
            f"With system.uam = {u.model_dump()} the SIR connectivity probability is {p_c:.2e}: an upload would "
            f"need about {1 / max(p_c, 1e-300):.3g} attempts, beyond system.uam.max_attempts={u.max_attempts}. "
            "Lower sir_threshold_db, raise path_loss_exponent, or change gbs_density / activity."
        )
    if s.availability != "always" or s.dropout > 0:
        raise ConfigError("system.profile=uam_wireless decides availability from the channel: keep "
                          "system.availability=always and system.dropout=0.")
    profile = DeviceProfile(s.seconds_per_sample, s.uplink_mbps * MBPS, s.downlink_mbps * MBPS, s.latency_s)
    scale = (num_params / s.reference_params) if num_params else 1.0
    gbs = make_gbs_layout(params, u.area_km, numpy_rng(seed, "uam", 0))
    corridors = make_corridors(num_clients, u.corridors, u.area_km, u.speed_kmh, numpy_rng(seed, "uam", 1))
    return UAMFleet([profile] * num_clients, scale, 0.0, seed, np.ones(num_clients), channel=params, gbs=gbs,
                    corridors=corridors, retry_s=u.retry_s, max_attempts=u.max_attempts)


__all__ = ["Corridors", "UAMFleet", "channel_params", "make_corridors", "make_gbs_layout", "make_uam_fleet"]

register_fleet("uam_wireless", make_uam_fleet)
