"""Norm clipping — Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated
Learning?", arXiv:1911.07963, 2019.

Rule: clip every update to norm M and take the weighted mean,

    Δ = Σ_k p_k · Δ_k · min(1, M / ‖Δ_k‖),

with p_k from the weighting stage (the only robust combiner that uses it; ``size`` by
default, as in the paper's example-weighted FedAvg). M = ``method.clip_norm``; without
it, the median norm of the round's updates (a data-driven bound: the paper fixes M by
hand).

Preset: weighting ``size``, combiner ``normclip`` (in :mod:`fedweave.methods.robust`,
clipping in :func:`fedweave.aggregate.clip_by_norm`), server optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register
from .robust import NormClipParams, robust_combiner
from .stages import register_combiner

SUMMARY = "weighted mean of updates clipped to norm M (Sun et al. 2019)"

register_combiner("normclip", robust_combiner("normclip"), SUMMARY, params=NormClipParams)

METHOD = register(
    MethodInfo(
        name="normclip",
        summary=SUMMARY,
        citation="Sun et al., arXiv:1911.07963, 2019",
        preset=Preset(weighting="size", combiner="normclip", server_opt="replace"),
    )
)
