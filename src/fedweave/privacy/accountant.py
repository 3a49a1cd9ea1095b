"""Privacy accounting for DP-FedAvg with Opacus's RDP accountant.

Each round of DP-FedAvg is one application of the sampled Gaussian mechanism: clients
are sampled by Poisson sampling with rate q, each contributes an update of L2 norm at most
C, and Gaussian noise of standard deviation σC is added to the sum. Its Rényi-DP is
composed over rounds and converted to (ε, δ) by Opacus's ``RDPAccountant`` (Mironov 2017;
Mironov, Talwar & Zhang 2019) — one accountant step per round with ``sample_rate = q`` and
``noise_multiplier = σ``. No formula is hand-rolled here.
"""

from __future__ import annotations

import math

from ..core.errors import ConfigError


def _accountant():
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "Differential privacy needs the opacus package for its accountant; "
            'install it with: pip install "fedweave[privacy]"'
        ) from None
    return RDPAccountant()


def check_accountant() -> None:
    """Raise ConfigError now (at config time) when the accountant cannot be loaded."""
    _accountant()


def dp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` rounds of the sampled Gaussian mechanism, at ``delta``."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = _accountant()
    for _ in range(rounds):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(acc.get_epsilon(delta=delta))
