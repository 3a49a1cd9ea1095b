"""Threats: attacks by malicious clients, an uplink eavesdropper, and the figures that
measure them (attack success rate, PGD robust accuracy, eavesdropper accuracy).

* :mod:`~fedweave.threats.attacks` — label flip, backdoor (BadNets / DBA), sign flip,
  Gaussian, scaling, ALIE, min-max, min-sum; configured by ``attack.*``;
* :mod:`~fedweave.threats.triggers` — backdoor trigger stamping;
* :mod:`~fedweave.models.adversarial` — PGD adversarial examples (FAL, robust accuracy; re-exported here);
* :mod:`~fedweave.threats.eavesdropper` — ``eavesdropper.*``;
* :mod:`~fedweave.threats.metrics` — ``attack_success_rate``, ``robust_accuracy``.

Each feature configures itself from the config through an extension of
:func:`fedweave.experiment.build_experiment` (``configure_*`` below).
"""

from ..models.adversarial import pgd_attack, robust_accuracy
from .attacks import AttackPlan, configure_attack, malicious_clients
from .eavesdropper import Eavesdropper, configure_eavesdropper
from .metrics import configure_robust_accuracy
from .triggers import Trigger, make_trigger

__all__ = [
    "AttackPlan", "configure_attack", "malicious_clients", "Eavesdropper", "configure_eavesdropper",
    "configure_robust_accuracy", "pgd_attack", "robust_accuracy", "Trigger", "make_trigger",
]
