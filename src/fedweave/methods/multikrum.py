"""Multi-Krum — Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Section 5).

Rule: score every update as Krum does (:mod:`fedweave.methods.krum`: summed squared
distances to its K − f − 2 nearest neighbours) and take the plain mean of the m updates of
lowest score; m = 1 is Krum. m = ``method.num_selected`` (default K − f, at most K), f =
``method.num_malicious`` (default 0: what the defense assumes). Needs K > 2f + 2. Every
update counts once: the weighting stage is ignored.

Preset: weighting ``size``, combiner ``multikrum`` (checks in
:mod:`fedweave.methods.robust`, maths in :mod:`fedweave.aggregate.krum`), server
optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register
from .robust import MultiKrumParams, robust_combiner
from .stages import register_combiner

SUMMARY = "Multi-Krum: mean of the m most central updates; ignores weights"

register_combiner("multikrum", robust_combiner("multikrum"), SUMMARY, params=MultiKrumParams)

METHOD = register(
    MethodInfo(
        name="multikrum",
        summary=SUMMARY,
        citation="Blanchard et al., NeurIPS 2017",
        preset=Preset(weighting="size", combiner="multikrum", server_opt="replace"),
    )
)
