"""The method registry: names → how to build a method's strategy and client algorithm.

A method is either a *preset* of stages (FedAvg, FedProx, FedAvgM, FedAdam...) whose
stages each stay overridable from the config, or a full strategy whose maths does not
decompose (SCAFFOLD, FedNova). Each method may declare its own parameters (a pydantic
model); ``method.*`` keys are validated against it, so a misspelt parameter is an error.

A registration carries everything the rest of fedweave must know about the method: its
set-up hook (``setup(exp)``: a model swap, pretraining, checks against the built
experiment), what it needs from whoever runs it (``needs``, see
:mod:`fedweave.methods.needs`) and what the generic threats mean for it (``threats``, see
:mod:`fedweave.methods.threat_adapter`). Code outside ``methods/`` reads these and never
names a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from ..aggregate import make_server_optimizer
from ..core.client import ClientAlgorithm
from ..core.errors import ConfigError, unknown_name
from ..core.registration import claim
from ..core.strategy import Strategy
from .needs import NOTHING, MethodNeeds
from .payloads import NO_PAYLOAD, PayloadSchema
from .stages import StagedStrategy, WithStageClients, get_combiner, get_weighting, make_stage, stage_params
from .threat_adapter import DELTA_UPLOADS, ThreatAdapter


class MethodParams(BaseModel):
    """Base of a method's own parameters (``method.<param>`` in the config)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Preset:
    weighting: str = "size"
    combiner: str = "mean"
    server_opt: str = "replace"
    server_lr: Optional[float] = None
    server_momentum: float = 0.0
    objective: Optional[str] = None  # forces the client objective (FedProx: "prox")
    client: Optional[Callable[[Any, Any], ClientAlgorithm]] = None  # (config, params) -> client (FedVSR)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    citation: str
    preset: Optional[Preset] = None
    build: Optional[Callable[[Any, Any], tuple[Strategy, ClientAlgorithm]]] = None  # (config, params) -> pair
    params: type[MethodParams] = MethodParams
    modes: tuple[str, ...] = ("sync",)
    stage_keys: tuple[str, ...] = field(default=())  # stage keys a full strategy accepts
    # (config, params, module) -> {name pattern: role}: the roles the method gives the
    # model's segments (FedPer's personal head, FedBN's normalisation layers); may raise
    # ConfigError when the model does not suit the method. See `method_roles`.
    roles: Optional[Callable[[Any, Any, Any], dict[str, str]]] = None
    # (experiment) -> None: the method's set-up once the experiment is built, before
    # privacy and threats wrap it (FRL's supermask model, pLoRA's adapters, FLTrust's
    # server trainer); may swap the model (Experiment.use_model), add observers, or raise
    # ConfigError. See `setup_method`.
    setup: Optional[Callable[[Any], None]] = None
    # what the method needs beyond plain client SGD that its code does not show and that a
    # runner must know before building it (FedLAW's server data, FLTrust's server
    # training); joined with what its built strategy and client show or declare (see
    # fedweave.methods.needs.method_needs)
    needs: MethodNeeds = NOTHING
    # what attacks and eavesdroppers mean for this method's messages
    threats: ThreatAdapter = DELTA_UPLOADS
    # what its clients upload beyond the standard update, with shapes and ranges: a
    # deployment server checks every update against it (see fedweave.methods.payloads)
    payload_schema: PayloadSchema = NO_PAYLOAD


_REGISTRY: dict[str, MethodInfo] = {}


def register(info: MethodInfo, *, replace: bool = False) -> MethodInfo:
    """Make ``info.name`` available as ``method.name`` (``replace=True`` re-registers it)."""
    claim("method", info.name, _REGISTRY, replace)
    if (info.preset is None) == (info.build is None):
        raise ValueError(f"method {info.name!r} needs exactly one of preset / build")
    _REGISTRY[info.name] = info
    return info


def registered() -> dict[str, MethodInfo]:
    """Every registered method (the package :mod:`fedweave.methods` imports each method
    module, which registers itself, before anything can ask)."""
    return dict(_REGISTRY)


def get_method(name: str) -> MethodInfo:
    methods = registered()
    if name not in methods:
        raise unknown_name("method", name, methods)
    return methods[name]


def method_params(info: MethodInfo, method_cfg, stage_fields: tuple[str, ...] = ()) -> MethodParams:
    """Validate the method's own ``method.*`` keys (those of its stages, ``stage_fields``, excepted)."""
    try:
        return info.params.model_validate({k: v for k, v in method_cfg.extras().items() if k not in stage_fields})
    except ValidationError as exc:
        allowed = ", ".join([*info.params.model_fields, *stage_fields]) or "none"
        problems = "; ".join(
            f"method.{'.'.join(map(str, e['loc']))}: {'unknown parameter' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"Invalid parameters for method {info.name!r}: {problems}. Its parameters: {allowed}.") from None


_STAGE_KEYS = ("weighting", "combiner", "server_opt", "server_momentum", "beta1", "beta2", "tau")


def build_method(config) -> tuple[Strategy, ClientAlgorithm]:
    """Resolve ``config.method`` into a (strategy, client algorithm) pair, or explain why not."""
    info = get_method(config.method.name)
    m = config.method
    params = method_params(info, m, _stage_fields(info, m))
    modes = info.modes if info.preset is None else StagedStrategy.modes
    if config.schedule.mode not in modes:
        raise ConfigError(
            f"Method {info.name!r} supports schedule.mode {', '.join(modes)}, not {config.schedule.mode!r}."
        )
    if info.preset is None:
        given = [k for k in _STAGE_KEYS if getattr(m, k) is not None and k not in info.stage_keys]
        if given:
            raise ConfigError(
                f"Method {info.name!r} is a full strategy whose maths does not decompose into stages; "
                f"remove method.{', method.'.join(given)}."
            )
        return info.build(config, params)
    return build_staged(info, config, params)


def method_roles(config, module) -> dict[str, str]:
    """The roles of the model's segments for this run: ``model.roles`` from the config,
    then the patterns the method declares (``MethodInfo.roles``) for this ``module``.

    The config's patterns come first, so they win where both match a name (the first
    matching pattern decides, see :meth:`fedweave.params.ParamSpec.from_module`).
    """
    roles = dict(config.model.roles)
    info = get_method(config.method.name)
    if info.roles is None:
        return roles
    m = config.method
    params = method_params(info, m, _stage_fields(info, m))
    for pattern, role in info.roles(config, params, module).items():
        roles.setdefault(pattern, role)
    return roles


def setup_method(exp) -> None:
    """Run the set-up hook of the experiment's method (``MethodInfo.setup``), if it has one."""
    info = get_method(exp.config.method.name)
    if info.setup is not None:
        info.setup(exp)


def _stages(info: MethodInfo, m) -> list[tuple[str, str]]:
    if info.preset is None:
        return []
    return [("weighting", m.weighting or info.preset.weighting), ("combiner", m.combiner or info.preset.combiner)]


def _stage_fields(info: MethodInfo, m) -> tuple[str, ...]:
    """The ``method.*`` keys that belong to the stages this run uses (FedDisco's a, b...)."""
    fields: list[str] = []
    for kind, name in _stages(info, m):
        (get_weighting if kind == "weighting" else get_combiner)(name)  # unknown names fail here
        model = stage_params(kind, name)
        fields += [f for f in (model.model_fields if model else ()) if f not in fields]
    return tuple(fields)


def build_staged(info: MethodInfo, config, params: MethodParams | None = None) -> tuple[Strategy, ClientAlgorithm]:
    preset, m = info.preset, config.method
    weighting = m.weighting or preset.weighting
    combiner = m.combiner or preset.combiner
    get_weighting(weighting), get_combiner(combiner)  # unknown names fail here, with the allowed list
    extras = m.extras()

    def values(kind: str, name: str) -> dict[str, Any]:
        fields = getattr(stage_params(kind, name), "model_fields", {})
        return {k: v for k, v in extras.items() if k in fields}

    stages = tuple(make_stage(kind, name, config, values(kind, name)) for kind, name in (("weighting", weighting), ("combiner", combiner)))
    opt_name = m.server_opt or preset.server_opt
    # the preset's optimizer settings apply to the preset's optimizer only
    same_opt = opt_name == preset.server_opt
    momentum = m.server_momentum if m.server_momentum is not None else (preset.server_momentum if same_opt else 0.0)
    if momentum and opt_name != "sgd":
        raise ConfigError(
            f"method.server_momentum applies only to server_opt 'sgd' (heavy-ball, FedAvgM); this run uses {opt_name!r}."
        )
    if opt_name == "replace" and m.server_lr is not None:
        raise ConfigError("method.server_lr has no effect with server_opt 'replace'; use server_opt 'sgd' for a server learning rate.")
    kwargs = {k: getattr(m, k) for k in ("beta1", "beta2", "tau") if getattr(m, k) is not None}
    preset_lr = preset.server_lr if same_opt else None
    server_opt = make_server_optimizer(opt_name, lr=m.server_lr if m.server_lr is not None else preset_lr, momentum=momentum, **kwargs)
    objective = preset.objective or config.client.objective
    strategy = StagedStrategy(info.name, weighting, combiner, server_opt, stages)
    if preset.client is not None:
        client = preset.client(config, params if params is not None else info.params())
    else:
        client = ClientAlgorithm(objective=objective, mu=config.client.mu)
    parts = [s.client for s in stages if getattr(s, "client", None) is not None]
    return strategy, (WithStageClients(client, parts) if parts else client)
