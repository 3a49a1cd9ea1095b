"""FedBN — Li, Jiang, Zhang, Kamp & Dou, "FedBN: Federated Learning on Non-IID Features
via Local Batch Normalization", ICLR 2021.

FedAvg on everything except the normalisation layers, which stay local:

    client k:  local SGD on all parameters, from (w_g, bn_k)
    server:    w_g ← Σ_k n_k w_k / Σ_k n_k     (non-normalisation parameters only)

Every normalisation layer — BatchNorm (1d/2d/3d), InstanceNorm, GroupNorm, LayerNorm — with
parameters or statistics gets role ``personal``: its weight, bias and running statistics
are trained (or tracked) on the client, stored per client by the client-state store, never
sent and never averaged. The paper uses BatchNorm; GroupNorm/LayerNorm have no statistics,
so with them FedBN personalises the affine parameters only. Integer counters
(``num_batches_tracked``) are never communicated in fedweave and stay with the worker's
model; they only matter for BatchNorm with ``momentum=None``.

A model without normalisation layers is refused when the experiment is built, with the
reason (FedBN would silently be FedAvg). Evaluation: the global model carries the
*initial* normalisation layers, so its test accuracy is not FedBN's figure; use
``eval.personalized: true`` (each client's model = global weights + its own
normalisation layers, on its held-out split), as the paper evaluates per client.
"""

from __future__ import annotations

from torch import nn

from ..core.errors import ConfigError
from .fedper import personal_roles
from .registry import MethodInfo, Preset, register

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_layers(module: nn.Module) -> list[str]:
    """Names of the normalisation layers that hold parameters or statistics."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, NORM_TYPES) and (any(True for _ in m.parameters(recurse=False))
                                          or any(True for _ in m.buffers(recurse=False))):
            out.append(name)
    return out


def norm_roles(config, params, module) -> dict[str, str]:
    layers = norm_layers(module)
    if not layers:
        hint = (
            "use model.name=mlp_norm (MLP with a norm layer after each hidden layer) or resnet, with model.norm=batch "
            "(or group)"
        )
        if config.model.norm == "none" and config.model.name in ("mlp_norm", "resnet"):
            hint = "set model.norm=batch (or group)"
        raise ConfigError(
            f"FedBN keeps each client's normalisation layers local, but model {config.model.name!r} has none "
            f"(no BatchNorm, GroupNorm or LayerNorm layer with parameters or statistics), so FedBN would be plain "
            f"FedAvg; {hint}."
        )
    return personal_roles(config.method.name, [f"{name}.*" if name else "*" for name in layers], module)


METHOD = register(
    MethodInfo(
        name="fedbn",
        summary="FedAvg except the normalisation layers (BatchNorm/GroupNorm weights, biases, statistics): kept local",
        citation="Li et al., ICLR 2021",
        preset=Preset(),
        roles=norm_roles,
    )
)
