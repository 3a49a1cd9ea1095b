"""FedAvgM — Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification", 2019.

Heavy-ball momentum on the server's pseudo-gradient g = w_g − Σ_k p_k w_k = −Σ_k p_k Δ_k:

    m ← β m + g;    w_g ← w_g − η m

(no (1 − β) factor; β = 0 and η = 1 is FedAvg). Defaults: η = ``method.server_lr`` = 1,
β = ``method.server_momentum`` = 0.9.

Preset: weighting ``size``, combiner ``mean``, server optimizer ``sgd``.
"""

from .registry import MethodInfo, Preset, register

METHOD = register(
    MethodInfo(
        name="fedavgm",
        summary="FedAvg with heavy-ball server momentum (server_lr, server_momentum)",
        citation="Hsu et al., arXiv:1909.06335, 2019",
        preset=Preset(weighting="size", combiner="mean", server_opt="sgd", server_lr=1.0, server_momentum=0.9),
    )
)
