"""Coordinate-wise median — Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.

Rule: for K updates Δ_1..Δ_K, the combined update is, coordinate by coordinate,

    Δ[p] = median_k Δ_k[p]      (even K: the mean of the two middle values)

It tolerates f < K/2 Byzantine updates: ``method.num_malicious`` f (default 0, what the
defense assumes; never read from ``attack.*``) must satisfy K ≥ 2f + 1. Every update
counts once: the weighting stage is ignored, as in the paper.

Preset: weighting ``size``, combiner ``median`` (checks in :mod:`fedweave.methods.robust`,
maths in :func:`fedweave.aggregate.median`), server optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register
from .robust import FParams, robust_combiner
from .stages import register_combiner

SUMMARY = "coordinate-wise median (Yin et al. 2018); ignores weights"

register_combiner("median", robust_combiner("median"), SUMMARY, params=FParams)

METHOD = register(
    MethodInfo(
        name="median",
        summary=SUMMARY,
        citation="Yin et al., ICML 2018",
        preset=Preset(weighting="size", combiner="median", server_opt="replace"),
    )
)
