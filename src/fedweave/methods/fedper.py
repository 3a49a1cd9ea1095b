"""FedPer — Arivazhagan, Aggarwal, Singh & Choudhary, "Federated Learning with
Personalization Layers", arXiv 1912.00818, 2019.

The model is split into *base* layers, shared and averaged as in FedAvg, and
*personalization* layers that every client trains and keeps:

    client k:  (w_b, h_k) ← local SGD on F_k(w_b, h_k) from (w_g, h_k)
    server:    w_g ← Σ_k n_k w_b,k / Σ_k n_k          (base layers only)

Here the personalization layers are the segments with role ``personal`` (see
:mod:`fedweave.params`): they never leave the client, are not counted in bytes, and the
worker stores and restores them per client through the client-state store. A client that
has never trained uses the initial head. The method declares its roles through
``MethodInfo.roles``: ``method.head`` (fnmatch patterns over parameter and buffer names,
e.g. ``["5.*"]``) or, by default, the last layer that holds parameters (``fc.*`` for the
ResNet, the last ``Linear`` of an MLP) — the paper's default of one personal layer. A
``model.roles`` entry in the config still wins over the method's for the names it matches.

The server is a FedAvg preset over the shared vector, so its stages stay overridable
(``method.server_opt`` ...). Evaluation: the test-set accuracy of the "global model" has
no meaning here (its head is the untrained initial one); use ``eval.personalized: true``,
which scores each client's base + own head on its held-out split.
"""

from __future__ import annotations

import fnmatch
from typing import Optional, Union

from pydantic import Field

from ..core.errors import ConfigError
from .registry import MethodInfo, MethodParams, Preset, register


class HeadParams(MethodParams):
    head: Optional[Union[str, list[str]]] = Field(
        None, description="name patterns of the personal layers (default: the last layer with parameters)"
    )


def last_layer(module) -> str:
    """The pattern of the module that owns the model's last parameter (``fc.*``, ``5.*``)."""
    names = [n for n, _ in module.named_parameters()]
    if not names:
        raise ConfigError("The model has no parameters; there is no layer to personalize.")
    owner, dot, _ = names[-1].rpartition(".")
    return f"{owner}.*" if dot else names[-1]


def _patterns(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def personal_roles(method: str, patterns: list[str], module) -> dict[str, str]:
    """``{pattern: "personal"}``, after checking that every pattern matches a parameter or
    buffer and that something shared is left to aggregate."""
    names = [n for n, _ in module.named_parameters()]
    all_names = names + [n for n, _ in module.named_buffers()]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in all_names):
            raise ConfigError(
                f"Method {method!r}: pattern {p!r} matches no parameter or buffer of the model; "
                f"its parameters are {', '.join(names)}."
            )
    if all(any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names):
        raise ConfigError(f"Method {method!r}: patterns {patterns} make every parameter personal; nothing would be shared.")
    return {p: "personal" for p in patterns}


def head_roles(config, params, module) -> dict[str, str]:
    """The personal head: ``method.head`` or the last layer."""
    patterns = _patterns(getattr(params, "head", None)) or [last_layer(module)]
    return personal_roles(config.method.name, patterns, module)


METHOD = register(
    MethodInfo(
        name="fedper",
        summary="FedAvg on the base layers; personal head kept on each client (method.head: patterns)",
        citation="Arivazhagan et al., arXiv 2019",
        preset=Preset(),
        params=HeadParams,
        roles=head_roles,
    )
)
