"""How the generic threat features (:mod:`fedweave.threats`) meet a method's messages.

Attacks, the eavesdropper and the attack figures are configured from their own config
sections and never name a method; where a method's uploads or predictions are not the
usual ones, its registration carries a :class:`ThreatAdapter` (``MethodInfo.threats``)
that says what the threat means there. The default fits a method whose uploads carry a
delta Δ = w_k − w_g and whose prediction is the plain argmax.
"""

from __future__ import annotations

from typing import Mapping


class ThreatAdapter:
    """The default: uploads carry deltas, predictions are never rejected."""

    #: client-poisoning attack kinds that the method carries out on the whole cohort
    #: instead (in the collusion hook, where ``attack.sees_benign`` applies): kind -> what
    #: the attack means for this method's uploads
    cohort_attacks: Mapping[str, str] = {}

    def attack_refusal(self, kind: str) -> str | None:
        """Why ``attack.kind=kind`` is undefined for this method's uploads (None: it is defined)."""
        return None

    def collude(self, kind: str, updates: list, reference: list[int], malicious: list[int]) -> list | None:
        """The cohort ``updates`` with the attackers' (indices ``malicious``) replaced, built
        from the updates at ``reference``; None: the generic rules on deltas apply."""
        return None

    def eavesdropper_refusal(self) -> str | None:
        """Why an eavesdropper learns nothing it could evaluate from this method's uplink (None: it can)."""
        return None

    def rejection_threshold(self, config) -> float | None:
        """The confidence below which the method rejects a prediction (None: it never does)."""
        return None


DELTA_UPLOADS = ThreatAdapter()

__all__ = ["ThreatAdapter", "DELTA_UPLOADS"]
