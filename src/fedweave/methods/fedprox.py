"""FedProx — Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.

Each client minimises its loss plus a proximal term that keeps it near the global model:

    h_k(w) = F_k(w) + (μ/2) ‖w − w_g‖²    (squared norm; gradient μ (w − w_g))

over the shared trainable parameters. The server is FedAvg's. ``client.mu`` sets μ;
with μ = 0 FedProx is FedAvg exactly.

Preset: FedAvg's stages with the client objective forced to ``prox``.
"""

from .registry import MethodInfo, Preset, register

METHOD = register(
    MethodInfo(
        name="fedprox",
        summary="FedAvg with a proximal term (mu/2)||w - w_g||^2 on clients (client.mu)",
        citation="Li et al., MLSys 2020",
        preset=Preset(weighting="size", combiner="mean", server_opt="replace", objective="prox"),
    )
)
