"""Krum — Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017.

Rule: of K updates, up to f may be Byzantine. Update i is scored by the summed squared
distances to its K − f − 2 nearest other updates,

    s(i) = Σ_{j ∈ N_i} ‖Δ_i − Δ_j‖²,

and the combined update is the Δ_i of lowest score (ties: the lower client id). Needs
K > 2f + 2. f is ``method.num_malicious`` (default 0: what the defense assumes; never read
from ``attack.*``). Every update counts once: the weighting stage is ignored.

Preset: weighting ``size``, combiner ``krum`` (checks in :mod:`fedweave.methods.robust`,
maths in :mod:`fedweave.aggregate.krum`), server optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register
from .robust import FParams, robust_combiner
from .stages import register_combiner

SUMMARY = "Krum: the most central update (Blanchard et al. 2017); ignores weights"

register_combiner("krum", robust_combiner("krum"), SUMMARY, params=FParams)

METHOD = register(
    MethodInfo(
        name="krum",
        summary=SUMMARY,
        citation="Blanchard et al., NeurIPS 2017",
        preset=Preset(weighting="size", combiner="krum", server_opt="replace"),
    )
)
