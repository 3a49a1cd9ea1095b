"""Wireless channel models (pure maths, no simulator state): see :mod:`.connectivity`."""

from .connectivity import (
    ChannelParams,
    connectivity_probability,
    distance_cdf,
    distance_pdf,
    interference_laplace,
    monte_carlo_connectivity,
    sample_link_distance,
)

__all__ = [
    "ChannelParams",
    "connectivity_probability",
    "distance_cdf",
    "distance_pdf",
    "interference_laplace",
    "monte_carlo_connectivity",
    "sample_link_distance",
]
