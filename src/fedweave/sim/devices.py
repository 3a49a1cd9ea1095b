"""Device profiles: how long a client job takes in virtual seconds, and when a device is online.

A job's virtual duration is download + compute + upload:

* download = latency + bytes_down / downlink bandwidth,
* compute  = examples processed × seconds per example × (num_params / reference_params),
* upload   = latency + bytes_up / uplink bandwidth.

Profiles (``system.profile``), all seeded from ``(seed, "devices")``:

``uniform``
    every device equal.
``lognormal``
    each device gets a slowdown factor s = exp(N(0, σ²)) that multiplies its compute
    time and divides its bandwidths.
``tiers``
    ``[[fraction, slowdown], ...]``: e.g. 30% of devices 10× slower (compute and links).
    Exactly round(fraction × N) devices per tier (the last tier takes the rest), devices
    assigned to tiers by a seeded permutation.
``trace``
    a CSV file: ``client_id, seconds_per_sample, uplink_mbps, downlink_mbps`` and an
    optional ``availability`` column of ``start-end`` windows in virtual seconds separated
    by ``;`` (empty: always online). Every client must appear exactly once.

Availability (``system.availability``): ``always``, or ``periodic``: each device is online
for ``on_fraction`` of every ``period_s`` seconds, with a seeded phase. A device that goes
offline before its job finishes drops the job. ``system.dropout`` is the probability that a
job fails anyway (decided at dispatch from ``(seed, "dropout", client id, job counter)``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.rng import numpy_rng

MBPS = 1e6 / 8  # bytes per second in one megabit per second
INF = float("inf")


@dataclass(frozen=True)
class DeviceProfile:
    seconds_per_sample: float
    uplink_bps: float  # bytes per second
    downlink_bps: float
    latency_s: float = 0.0
    windows: tuple[tuple[float, float], ...] | None = None  # absolute online windows; None: see period
    period_s: float | None = None  # periodic availability
    on_s: float = 0.0
    phase_s: float = 0.0

    def download_s(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.downlink_bps

    def compute_s(self, examples: int) -> float:
        return examples * self.seconds_per_sample

    def upload_s(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.uplink_bps

    # -- availability ---------------------------------------------------------------------
    def online_until(self, t: float) -> float | None:
        """End of the online window containing ``t`` (inf: always), or None if offline at t."""
        if self.windows is not None:
            for start, end in self.windows:
                if start <= t < end:
                    return end
            return None
        if self.period_s is None:
            return INF
        pos = (t - self.phase_s) % self.period_s
        if pos < self.on_s:
            return t - pos + self.on_s
        return None

    def next_online(self, t: float) -> float:
        """The first time ≥ t at which the device is online (inf: never again)."""
        if self.online_until(t) is not None:
            return t
        if self.windows is not None:
            starts = [s for s, _ in self.windows if s >= t]
            return min(starts) if starts else INF
        pos = (t - self.phase_s) % self.period_s
        return t + (self.period_s - pos)


@dataclass
class DeviceFleet:
    """The profiles of all clients, indexed by client id."""

    profiles: list[DeviceProfile]
    compute_scale: float = 1.0  # num_params / reference_params
    dropout: float = 0.0
    seed: int = 0
    slowdowns: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __getitem__(self, client_id: int) -> DeviceProfile:
        return self.profiles[client_id]

    def __len__(self) -> int:
        return len(self.profiles)

    def compute_s(self, client_id: int, examples: int) -> float:
        return self.profiles[client_id].compute_s(examples) * self.compute_scale

    def job_duration(self, client_id: int, bytes_down: int, examples: int, bytes_up: int) -> float:
        p = self.profiles[client_id]
        return p.download_s(bytes_down) + self.compute_s(client_id, examples) + p.upload_s(bytes_up)

    def available(self, client_id: int, t: float) -> bool:
        return self.profiles[client_id].online_until(t) is not None

    @property
    def always_online(self) -> bool:
        if not hasattr(self, "_always"):
            self._always = all(p.windows is None and p.period_s is None for p in self.profiles)
        return self._always

    def available_mask(self, t: float) -> np.ndarray:
        return np.array([p.online_until(t) is not None for p in self.profiles], dtype=bool)

    def drops(self, client_id: int, counter: int) -> bool:
        """Whether this job fails (seeded per client and job)."""
        if self.dropout <= 0:
            return False
        return bool(numpy_rng(self.seed, "dropout", client_id, counter).random() < self.dropout)


def make_fleet(system_cfg, num_clients: int, seed: int, num_params: int = 0) -> DeviceFleet:
    s = system_cfg
    rng = numpy_rng(seed, "devices")
    if s.profile == "trace":
        profiles = read_trace(s.trace, num_clients, s.latency_s)
        slowdowns = np.array([p.seconds_per_sample / s.seconds_per_sample for p in profiles])
    else:
        if s.profile == "uniform":
            slowdowns = np.ones(num_clients)
        elif s.profile == "lognormal":
            slowdowns = np.exp(rng.normal(0.0, s.sigma, size=num_clients))
        else:  # tiers
            slowdowns = np.empty(num_clients)
            order = rng.permutation(num_clients)
            start = 0
            for i, (fraction, slowdown) in enumerate(s.tiers):
                count = num_clients - start if i == len(s.tiers) - 1 else int(round(fraction * num_clients))
                slowdowns[order[start : start + count]] = slowdown
                start += count
        profiles = [
            DeviceProfile(
                seconds_per_sample=s.seconds_per_sample * f,
                uplink_bps=s.uplink_mbps * MBPS / f,
                downlink_bps=s.downlink_mbps * MBPS / f,
                latency_s=s.latency_s,
            )
            for f in slowdowns
        ]
    if s.availability == "periodic":
        phases = rng.uniform(0.0, s.period_s, size=num_clients)
        profiles = [
            DeviceProfile(p.seconds_per_sample, p.uplink_bps, p.downlink_bps, p.latency_s, p.windows,
                          s.period_s, s.on_fraction * s.period_s, float(ph)) if p.windows is None else p
            for p, ph in zip(profiles, phases)
        ]
    scale = (num_params / s.reference_params) if num_params else 1.0
    return DeviceFleet(profiles, scale, s.dropout, seed, np.asarray(slowdowns, dtype=np.float64))


def read_trace(path: str, num_clients: int, latency_s: float) -> list[DeviceProfile]:
    """Parse a device trace CSV; errors name the file, the line and the problem."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Device trace {path!r} does not exist (system.trace).")
    required = ["client_id", "seconds_per_sample", "uplink_mbps", "downlink_mbps"]
    profiles: dict[int, DeviceProfile] = {}
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}, line 1: missing column(s) {', '.join(missing)}; expected {', '.join(required)}[, availability].")
        for line_no, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            where = f"{path}, line {line_no}"
            try:
                cid = int(row["client_id"])
                sps, up, down = float(row["seconds_per_sample"]), float(row["uplink_mbps"]), float(row["downlink_mbps"])
            except ValueError:
                raise DataError(f"{where}: client_id must be an integer and speeds numbers; got {row}.") from None
            if not 0 <= cid < num_clients:
                raise DataError(f"{where}: unknown client id {cid}; this federation has clients 0..{num_clients - 1}.")
            if cid in profiles:
                raise DataError(f"{where}: client {cid} appears twice.")
            if not (sps > 0 and up > 0 and down > 0) or not all(map(math.isfinite, (sps, up, down))):
                raise DataError(f"{where}: seconds_per_sample and bandwidths must be positive; got {sps}, {up}, {down}.")
            windows = _parse_windows(row.get("availability", ""), where)
            profiles[cid] = DeviceProfile(sps, up * MBPS, down * MBPS, latency_s, windows)
    absent = sorted(set(range(num_clients)) - set(profiles))
    if absent:
        raise DataError(f"{path}: no row for client(s) {absent[:10]}{'...' if len(absent) > 10 else ''}; every client needs one.")
    return [profiles[c] for c in range(num_clients)]


def _parse_windows(text: str, where: str) -> tuple[tuple[float, float], ...] | None:
    if not text:
        return None
    windows = []
    for part in text.split(";"):
        try:
            start, end = (float(v) for v in part.split("-"))
        except ValueError:
            raise DataError(f"{where}: availability window {part!r} must look like start-end (seconds).") from None
        if not 0 <= start < end:
            raise DataError(f"{where}: availability window {part!r} needs 0 <= start < end.")
        windows.append((start, end))
    return tuple(sorted(windows))
