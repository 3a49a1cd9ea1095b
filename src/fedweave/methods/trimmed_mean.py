"""Coordinate-wise trimmed mean — Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.

Rule: for K updates and each coordinate p, drop the b largest and the b smallest values
of Δ_1[p]..Δ_K[p] and average the K − 2b that remain.

b = ⌊βK⌋ with β = ``method.trim_beta``; without it, b = f when ``method.num_malicious`` f
> 0 (trim exactly the assumed attackers), else β = 0.2. Needs b ≥ f and K > 2b. Every
update counts once: the weighting stage is ignored, as in the paper.

Preset: weighting ``size``, combiner ``trimmed_mean`` (checks in
:mod:`fedweave.methods.robust`, maths in :func:`fedweave.aggregate.trimmed_mean`), server
optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register
from .robust import TrimParams, robust_combiner
from .stages import register_combiner

SUMMARY = "coordinate-wise trimmed mean (Yin et al. 2018); ignores weights"

register_combiner("trimmed_mean", robust_combiner("trimmed_mean"), SUMMARY, params=TrimParams)

METHOD = register(
    MethodInfo(
        name="trimmed_mean",
        summary=SUMMARY,
        citation="Yin et al., ICML 2018",
        preset=Preset(weighting="size", combiner="trimmed_mean", server_opt="replace"),
    )
)
