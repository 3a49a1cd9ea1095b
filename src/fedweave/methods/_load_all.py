"""Imports every method module so that each registers itself (in this order)."""

from . import fedadagrad, fedadam, fedavg, fedavgm, fednova, fedprox, fedyogi, scaffold  # noqa: F401
