"""Simulation: virtual clock and events, workers and executors, the engine.

Device fleets that are more than a list of profiles register themselves on import:
``sim/uam.py`` (``system.profile: uam_wireless``).
"""

from . import uam  # noqa: F401  (registers system.profile uam_wireless)
