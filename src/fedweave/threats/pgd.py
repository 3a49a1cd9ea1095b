"""Compatibility path: PGD adversarial examples live in :mod:`fedweave.models.adversarial`
(a method, FAL, trains with them, so they sit below both the methods and the threats)."""

from ..models.adversarial import pgd_attack, robust_accuracy

__all__ = ["pgd_attack", "robust_accuracy"]
