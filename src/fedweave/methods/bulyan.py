"""Bulyan — El Mhamdi, Guerraoui & Rouault, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018.

Rule, for K updates of which f may be Byzantine (needs K ≥ 4f + 3):

1. selection: apply Krum (:mod:`fedweave.methods.krum`) repeatedly, removing each chosen
   update and rescoring the rest, until θ = K − 2f updates are selected;
2. aggregation: per coordinate, average the β = θ − 2f selected values closest to the
   coordinate-wise median of the selection.

f is ``method.num_malicious`` (default 0: what the defense assumes; never read from
``attack.*``). Every update counts once: the weighting stage is ignored.

Preset: weighting ``size``, combiner ``bulyan`` (checks in :mod:`fedweave.methods.robust`,
maths and tie conventions in :mod:`fedweave.aggregate.krum`), server optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register
from .robust import FParams, robust_combiner
from .stages import register_combiner

SUMMARY = "Bulyan: Krum selection + trimmed median (El Mhamdi et al. 2018); ignores weights"

register_combiner("bulyan", robust_combiner("bulyan"), SUMMARY, params=FParams)

METHOD = register(
    MethodInfo(
        name="bulyan",
        summary=SUMMARY,
        citation="El Mhamdi et al., ICML 2018",
        preset=Preset(weighting="size", combiner="bulyan", server_opt="replace"),
    )
)
