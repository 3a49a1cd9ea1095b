"""FedAdagrad — Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2).

The server treats the averaged client delta Δ = Σ_k p_k Δ_k as a pseudo-gradient and
takes an adaptive step:

    m ← β₁ m + (1 − β₁) Δ
    v ← v + Δ²
    w_g ← w_g + η m / (√v + τ)

Defaults: η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 1e-3 (method.server_lr, method.beta1,
method.beta2, method.tau). No bias correction, as in the paper.

Preset: weighting ``size``, combiner ``mean``, server optimizer ``adagrad``.
"""

from .registry import MethodInfo, Preset, register

METHOD = register(
    MethodInfo(
        name="fedadagrad",
        summary="adaptive server optimizer (Adagrad) on the averaged client delta",
        citation="Reddi et al., ICLR 2021",
        preset=Preset(weighting="size", combiner="mean", server_opt="adagrad"),
    )
)
