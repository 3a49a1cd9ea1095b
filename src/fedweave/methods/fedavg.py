"""FedAvg — McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.

Clients run local SGD from the global model; the server replaces it by the
example-weighted average of the client models:

    w_g ← Σ_k n_k w_k / Σ_k n_k  =  w_g + Σ_k p_k Δ_k,   p_k = n_k / Σ_j n_j.

Preset: weighting ``size``, combiner ``mean``, server optimizer ``replace``.
"""

from .registry import MethodInfo, Preset, register

METHOD = register(
    MethodInfo(
        name="fedavg",
        summary="example-weighted average of client models",
        citation="McMahan et al., AISTATS 2017",
        preset=Preset(weighting="size", combiner="mean", server_opt="replace"),
    )
)
