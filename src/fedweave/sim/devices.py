"""Device profiles: how long a client job takes in virtual seconds.

A job's virtual duration is download + compute + upload:

* download = latency + bytes_down / downlink bandwidth,
* compute = examples processed × seconds per example,
* upload = latency + bytes_up / uplink bandwidth.

The foundation has one profile, ``uniform`` (all devices equal); heterogeneous profiles
(tiers, lognormal, traces, availability, dropouts) plug in behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class DeviceProfile:
    seconds_per_sample: float
    uplink_bps: float  # bytes per second
    downlink_bps: float
    latency_s: float = 0.0

    def download_s(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.downlink_bps

    def compute_s(self, examples: int) -> float:
        return examples * self.seconds_per_sample

    def upload_s(self, num_bytes: int) -> float:
        return self.latency_s + num_bytes / self.uplink_bps


class DeviceFleet:
    """The profiles of all clients, indexed by client id."""

    def __init__(self, profiles: list[DeviceProfile]):
        self.profiles = profiles

    def __getitem__(self, client_id: int) -> DeviceProfile:
        return self.profiles[client_id]

    def job_duration(self, client_id: int, bytes_down: int, examples: int, bytes_up: int) -> float:
        p = self.profiles[client_id]
        return p.download_s(bytes_down) + p.compute_s(examples) + p.upload_s(bytes_up)


def make_fleet(system_cfg, num_clients: int, seed: int) -> DeviceFleet:
    mbps = 1e6 / 8  # bytes per second in one megabit per second
    profile = DeviceProfile(
        seconds_per_sample=system_cfg.seconds_per_sample,
        uplink_bps=system_cfg.uplink_mbps * mbps,
        downlink_bps=system_cfg.downlink_mbps * mbps,
        latency_s=system_cfg.latency_s,
    )
    return DeviceFleet([profile] * num_clients)


