"""Bridges between fedweave and other federated-learning frameworks.

* :mod:`fedweave.integrations.flower` -- run a registered fedweave method as a strategy
  of Flower's Message API (``pip install "fedweave[flower]"``).

Importing this package imports no third-party framework; each integration module checks
its framework (installed, supported version) and says how to fix a problem.
"""
