"""Run fedweave's server-side methods inside a Flower app (Flower's Message API).

:class:`FedweaveStrategy` is a ``flwr.serverapp.strategy`` strategy. It samples nodes
and runs federated evaluation exactly like Flower's ``FedAvg`` (whose options it
accepts), and replaces the aggregation of training replies by the strategy of a
registered fedweave method::

    from fedweave.integrations.flower import FedweaveStrategy

    strategy = FedweaveStrategy("fedadam", params={"server_lr": 0.05}, fraction_train=0.5)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=10)

How a round maps onto fedweave
------------------------------
* The global ``ArrayRecord`` is laid out as fedweave flat vectors, in record order:
  floating-point arrays whose key matches ``buffer_keys`` (BatchNorm running statistics
  by default) form the buffer vector, which fedweave always averages by example count;
  the other floating-point arrays form the trainable vector the method's maths works on;
  integer arrays (``num_batches_tracked``) are not aggregated and keep the global value,
  as in fedweave's own engine. Keys such as ``fc1.weight`` group into layers
  (``fc1``) for layer-wise methods.
* Each training reply (one ``ArrayRecord`` and one ``MetricRecord``, as Flower's
  strategies expect) becomes a :class:`fedweave.messages.Update`: ``delta`` = client
  arrays - global arrays; ``num_examples`` = the ``num-examples`` metric
  (``weighted_by_key``); ``num_steps`` = the optional ``num-steps`` metric; metrics
  named ``payload.<key>`` become ``payload[<key>]`` (a list becomes a 1-D float32
  tensor, as fedweave's own uploads); the
  other scalar metrics become ``Update.metrics``.
* Nodes are numbered 0, 1, ... in increasing Flower node id (new nodes are appended),
  and updates reach the method sorted by that number, as in fedweave's engine, so the
  result does not depend on the order replies arrive in. Updates with non-finite values
  are dropped, as in fedweave's engine.
* The method's :class:`~fedweave.methods.ServerContext` gets the layout (``spec``), the
  number of nodes seen (or ``num_clients``), each node's last reported example count,
  a wall clock, ``seed``, ``server_data`` and ``client_lr``.

Which methods run
-----------------
Flower provides parameters, example counts and metrics. A method that needs more is
refused when the strategy is built, with a message naming what is missing. What a
method needs is the method's own account (:mod:`fedweave.methods.needs`): what its
registration declares (``MethodInfo.needs``) joined with what its strategy and client
algorithm show; a strategy given directly may carry a ``needs`` attribute (a set of the
names below) instead (see :data:`NEEDS`):

* ``num_steps`` -- the number of local steps: each ClientApp sends metric ``num-steps``;
* ``round_lr`` -- the clients' learning rate: pass ``client_lr=``;
* ``server_data`` -- a server-held labelled set: pass ``server_data=(x, y)``;
* ``model_factory`` -- the model itself on the server (FedLAW evaluates candidate
  aggregates): pass ``model_factory=`` (a function returning the model);
* ``payload:<key>`` -- an extra client upload: each ClientApp sends metric
  ``payload.<key>`` (a number or a list of numbers, e.g. a label histogram);
* ``client_logic`` -- fedweave client-side training code (a client algorithm that
  overrides ``train``/``grad_hooks``/``loss_fn``/``upload_payload``/``build_update``/
  ``next_state`` without declaring ``needs``): refused, a Flower ClientApp runs its own
  training;
* ``client_state`` -- per-client state kept by fedweave between rounds: refused;
* ``broadcast`` -- data beyond the global model sent to clients, or per-client
  messages (a strategy overriding ``configure``/``broadcast_payload``, a stage with a
  ``broadcast_payload`` hook): refused;
* ``server_training`` -- training on the server with fedweave's trainer (FLTrust): refused.

Methods that run only asynchronously or buffered (FedAsync, FedBuff) are refused too:
Flower's rounds are synchronous.

The client objective ``prox`` (FedProx) is accepted: the strategy adds
``proximal-mu`` to the training ``ConfigRecord``, the key Flower's own FedProx uses,
and the ClientApp must add the proximal term. Check a method without starting Flower
with :func:`flower_support`, or from a shell::

    python -m fedweave.integrations.flower krum --set method.num_malicious=1

which prints what the ClientApp must send, or the refusal (exit code 2).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from typing import Any, Iterable

import numpy as np
import torch

from ..config import Config, load_config
from ..core.errors import ConfigError, DivergedError, FedweaveError
from ..core.messages import Update
from ..core.params import ParamSpec, Segment
from ..core.strategy import ServerContext, ServerState, Strategy

__all__ = [
    "DEFAULT_BUFFER_KEYS",
    "FLOWER_SUPPORTED",
    "FedweaveStrategy",
    "FlowerAdapterError",
    "FlowerSupport",
    "FlowerVersionError",
    "NEEDS",
    "UnsupportedMethodError",
    "check_flower_version",
    "flower_support",
    "require_flower",
]

logger = logging.getLogger(__name__)

#: The Flower releases this adapter supports: the Message API strategies
#: (``flwr.serverapp.strategy``) appeared in Flower 1.21; fedweave needs 1.24 (the version pyproject.toml requires).
FLOWER_MIN = (1, 21)
FLOWER_MAX_EXCLUSIVE = (2, 0)
FLOWER_SUPPORTED = ">=1.24,<2"

#: Record keys aggregated as fedweave buffers (plain example-weighted mean).
DEFAULT_BUFFER_KEYS: tuple[str, ...] = ("*running_mean", "*running_var")

#: Metric names a ClientApp uses to send what some methods need.
NUM_STEPS_METRIC = "num-steps"
PAYLOAD_PREFIX = "payload."

#: What a method may need, and how Flower provides it (None: it cannot).
NEEDS: dict[str, str | None] = {
    "num_steps": f"each ClientApp sends its number of local steps as metric {NUM_STEPS_METRIC!r}",
    "round_lr": "pass client_lr= (the clients' learning rate) to FedweaveStrategy",
    "server_data": "pass server_data=(x, y) (a server-held labelled set) to FedweaveStrategy",
    "model_factory": "pass model_factory= (a function building the model whose state_dict keys are the arrays') "
    "to FedweaveStrategy",
    "payload:<key>": f"each ClientApp sends metric '{PAYLOAD_PREFIX}<key>' (a number or a list of numbers)",
    "client_logic": None,
    "client_state": None,
    "broadcast": None,
    "server_training": None,
}

_REFUSED_WHY = {
    "client_logic": "fedweave client-side training logic ({detail}), which a Flower ClientApp does not run",
    "client_state": "per-client state that fedweave keeps between rounds, which Flower does not store",
    "broadcast": "data beyond the global model sent to clients, or a different message per client "
    "({detail}), which the adapter cannot send",
    "server_training": "training on the server's own data with fedweave's trainer, which the adapter does not set up",
}

class FlowerAdapterError(FedweaveError):
    """The Flower adapter cannot do what it was asked (bad replies, bad arrays...)."""


class FlowerVersionError(FlowerAdapterError, ImportError):
    """Flower is not installed, or its version is not supported."""


class UnsupportedMethodError(FlowerAdapterError, ConfigError):
    """The method needs something that Flower does not provide."""


# --------------------------------------------------------------------------------------
# Flower version
# --------------------------------------------------------------------------------------


def _parse_version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text.split("+")[0])[:3]
    return tuple(int(p) for p in parts)


def check_flower_version(version: str | None = None) -> str:
    """Return the Flower version, or raise :class:`FlowerVersionError` saying what to do.

    ``version`` defaults to the installed ``flwr``'s.
    """
    fix = f'pip install "fedweave[flower]" (Flower {FLOWER_SUPPORTED})'
    if version is None:
        try:
            version = _metadata.version("flwr")
        except _metadata.PackageNotFoundError:
            try:  # installed under another distribution name (flwr-nightly)
                import flwr

                version = str(flwr.__version__)
            except (ImportError, AttributeError):
                raise FlowerVersionError(
                    f"The Flower adapter needs Flower (the flwr package), which is not installed. Install it with: "
                    f"{fix}."
                ) from None
    parsed = _parse_version(version)
    if not parsed or parsed[:2] < FLOWER_MIN or parsed[:2] >= FLOWER_MAX_EXCLUSIVE:
        raise FlowerVersionError(
            f"Flower {version} is installed, but the fedweave adapter supports Flower {FLOWER_SUPPORTED} "
            f"(the Message API strategies of flwr.serverapp.strategy). Install a supported version with: {fix}."
        )
    return version


def _flower_problem() -> FlowerVersionError | None:
    try:
        check_flower_version()
    except FlowerVersionError as exc:
        return exc
    return None


_PROBLEM = _flower_problem()
if _PROBLEM is None:
    try:
        from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
        from flwr.serverapp.strategy import FedAvg as _FlowerBase
    except ImportError as exc:  # an installation that claims a supported version but is broken
        _PROBLEM = FlowerVersionError(
            f"Flower is installed but its Message API could not be imported ({exc}). Reinstall it with: "
            f'pip install --force-reinstall "fedweave[flower]".'
        )
if _PROBLEM is not None:
    _FlowerBase = object  # the adapter class still defines; building one raises _PROBLEM


def require_flower() -> None:
    """Raise :class:`FlowerVersionError` unless a supported Flower is importable."""
    if _PROBLEM is not None:
        raise _PROBLEM


# --------------------------------------------------------------------------------------
# Which methods run on Flower
# --------------------------------------------------------------------------------------


@dataclass
class FlowerSupport:
    """Whether a method runs on Flower, and what the Flower app must provide."""

    method: str
    needs: frozenset[str]
    refused: list[str] = field(default_factory=list)  # reasons; empty when supported
    client_duties: list[str] = field(default_factory=list)  # what each ClientApp must do
    fixable: bool = True  # every refusal goes away with an argument of FedweaveStrategy

    @property
    def supported(self) -> bool:
        return not self.refused

    def message(self) -> str:
        if self.refused:
            return (
                f"Method {self.method!r} cannot run as a Flower strategy: it needs "
                + "; and ".join(self.refused)
                + "."
                + (
                    ""
                    if self.fixable
                    else " Use a method whose server side needs only parameters, example counts and metrics "
                    "(e.g. fedavg, fedavgm, fedadam, fedyogi, fedadagrad), or run it with `fedweave run`."
                )
            )
        duties = "; ".join(self.client_duties) if self.client_duties else "send its arrays and a 'num-examples' metric"
        return f"Method {self.method!r} runs as a Flower strategy. Each ClientApp must: {duties}."


def method_needs(info, strategy: Strategy, client) -> tuple[frozenset[str], dict[str, str]]:
    """What a method needs beyond arrays and example counts, as the names of :data:`NEEDS`,
    and details for messages: the method's own account
    (:func:`fedweave.methods.needs.method_needs`: its registration's declaration joined
    with what its strategy and client show). Needs that only matter to fedweave's own
    runners (a personal model for personalized evaluation) are left out."""
    from ..methods.needs import method_needs as own_needs

    needs = own_needs(info, strategy, client)
    return _flower_names(needs), _details(needs)


def _flower_names(needs) -> frozenset[str]:
    return needs.names() - {"personal_model", "mid_training_fetch"}


def _details(needs) -> dict[str, str]:
    return {k: v for k, v in (("client_logic", needs.client_logic), ("broadcast", needs.broadcast)) if v}


def _assess(name, needs, detail, client, *, client_lr, has_server_data, has_model_factory) -> FlowerSupport:
    support = FlowerSupport(name, needs)
    support.client_duties.append("send its trained arrays (same keys and shapes) and the metric 'num-examples'")
    for need in sorted(needs):
        if need in _REFUSED_WHY:
            support.refused.append(_REFUSED_WHY[need].format(detail=detail.get(need, "")).replace(" ()", ""))
            support.fixable = False
        elif need == "num_steps":
            support.client_duties.append(f"send its number of local steps as metric {NUM_STEPS_METRIC!r}")
        elif need == "round_lr":
            if client_lr is None:
                support.refused.append("the clients' learning rate (pass client_lr=... to FedweaveStrategy)")
        elif need == "server_data":
            if not has_server_data:
                support.refused.append("a server-held labelled data set (pass server_data=(x, y) to FedweaveStrategy)")
        elif need == "model_factory":
            if not has_model_factory:
                support.refused.append(
                    "the model on the server (pass model_factory=..., a function returning the model whose "
                    "state_dict the arrays are, to FedweaveStrategy)"
                )
        elif need.startswith("payload:") and len(need) > len("payload:"):
            key = need[len("payload:"):]
            support.client_duties.append(f"send metric '{PAYLOAD_PREFIX}{key}' (a number or a list of numbers)")
        else:
            support.refused.append(f"{need!r}, which the Flower adapter does not know how to provide")
            support.fixable = False
    if client is not None and getattr(client, "objective", "plain") == "prox":
        support.client_duties.append(
            "add the proximal term (mu/2)*||w - w_global||^2 to its loss, with mu from the train config key 'proximal-mu'"
        )
    return support


def _config_for(method, params: dict | None, client: dict | None, has_server_data: bool) -> Config:
    """The fedweave Config a method is built from under Flower.

    Flower picks each round's cohort, so a method given by name is built as for cohorts
    of unknown size (``schedule.sampling: poisson``; robust combiners then check their
    cohort each round); with ``server_data`` it is built as if the server held a split.
    A full Config is used as given.
    """
    params = dict(params or {})
    if isinstance(method, Config):
        extra: dict[str, Any] = {}
        if params:
            extra["method"] = params
        if client:
            extra["client"] = dict(client)
        return load_config(method, extra or None)
    if isinstance(method, str):
        section = {"name": method, **params}
    elif isinstance(method, dict):
        section = {**method, **params}
    else:
        raise ConfigError(
            f"method must be a registered method name, a dict of method settings, a fedweave Config or a fedweave "
            f"Strategy; got {type(method).__name__}."
        )
    raw: dict[str, Any] = {"method": section, "schedule": {"sampling": "poisson", "sampling_rate": 1.0}}
    if client:
        raw["client"] = dict(client)
    if has_server_data:
        raw["data"] = {"server_fraction": 0.02}
    return load_config(raw)


def _resolve(method, params, client, *, client_lr, has_server_data, has_model_factory):
    """(info, strategy, client algorithm, config, support) for any accepted ``method`` form.

    Raises UnsupportedMethodError for methods refused before they are built.
    """
    flags = dict(client_lr=client_lr, has_server_data=has_server_data, has_model_factory=has_model_factory)
    if isinstance(method, Strategy):
        if params or client:
            raise ConfigError("params= and client= apply to registered methods, not to a Strategy instance.")
        name = getattr(method, "name", type(method).__name__)
        needs, detail = method_needs(None, method, None)
        return None, method, None, None, _assess(name, needs, detail, None, **flags)
    from ..methods import build_method, get_method

    cfg = _config_for(method, params, client, has_server_data)
    info = get_method(cfg.method.name)
    if "sync" not in info.modes:
        raise UnsupportedMethodError(
            f"Method {info.name!r} runs only with schedule.mode {' or '.join(info.modes)}, and Flower's rounds are "
            f"synchronous; use a synchronous method, or run it with `fedweave run`."
        )
    # what the registration declares is checked before building: a method's build may
    # check fedweave's own schedule and data settings, which mean nothing under Flower
    pre = _assess(info.name, _flower_names(info.needs), _details(info.needs), None, **flags)
    if not pre.supported:
        raise UnsupportedMethodError(pre.message())
    strategy, algorithm = build_method(cfg)
    needs, detail = method_needs(info, strategy, algorithm)
    return info, strategy, algorithm, cfg, _assess(info.name, needs, detail, algorithm, **flags)


def flower_support(
    method: str | dict | Config | Strategy = "fedavg",
    *,
    params: dict | None = None,
    client: dict | None = None,
    client_lr: float | None = None,
    server_data: bool = False,
    model_factory: bool = False,
) -> FlowerSupport:
    """Whether ``method`` runs as a Flower strategy and what ClientApps must send.

    Arguments as for :class:`FedweaveStrategy`; ``server_data`` and ``model_factory``
    only say whether they will be given. Refusals found before the method can be built
    (asynchronous methods...) raise UnsupportedMethodError; unknown methods and bad
    parameters raise ConfigError, as in ``fedweave run``.
    """
    *_, support = _resolve(
        method, params, client, client_lr=client_lr, has_server_data=server_data, has_model_factory=model_factory
    )
    return support


# --------------------------------------------------------------------------------------
# ArrayRecord <-> flat vectors
# --------------------------------------------------------------------------------------


class ArrayLayout:
    """How the arrays of a Flower ``ArrayRecord`` map onto fedweave flat vectors."""

    def __init__(self, record, buffer_keys: Iterable[str] = DEFAULT_BUFFER_KEYS):
        if len(record) == 0:
            raise FlowerAdapterError("The global ArrayRecord is empty: there are no parameters to aggregate.")
        patterns = tuple(buffer_keys)
        self.keys = list(record.keys())
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.np_dtypes: dict[str, np.dtype] = {}
        self.roles: dict[str, str] = {}
        float_dtypes = []
        for key, arr in record.items():
            shape = tuple(int(s) for s in arr.shape)
            dt = np.dtype(arr.dtype)
            self.shapes[key], self.np_dtypes[key] = shape, dt
            if dt.kind != "f":
                self.roles[key] = "int_buffer"
                continue
            self.roles[key] = "buffer" if any(fnmatch.fnmatchcase(key, p) for p in patterns) else "trainable"
            float_dtypes.append(torch.from_numpy(np.zeros(0, dtype=dt)).dtype)
        if not any(r == "trainable" for r in self.roles.values()):
            raise FlowerAdapterError(
                "The global ArrayRecord has no floating-point array to aggregate besides buffers "
                f"(keys: {', '.join(self.keys)})."
            )
        dtype = float_dtypes[0]
        for d in float_dtypes[1:]:
            dtype = torch.promote_types(dtype, d)
        self.dtype = dtype
        offsets = {"trainable": 0, "buffer": 0}
        segments = []
        for role in ("trainable", "buffer"):
            for key in self.keys:
                if self.roles[key] != role:
                    continue
                shape = self.shapes[key]
                segments.append(Segment(key, shape, dtype, role, role == "buffer", offsets[role]))
                offsets[role] += int(np.prod(shape, dtype=np.int64))
        segments += [
            Segment(k, self.shapes[k], dtype, "int_buffer", True, -1) for k in self.keys if self.roles[k] == "int_buffer"
        ]
        self.spec = ParamSpec(segments, dtype)

    def check(self, record, where: str) -> None:
        keys = list(record.keys())
        if set(keys) != set(self.keys):
            missing = [k for k in self.keys if k not in record]
            extra = [k for k in keys if k not in self.shapes]
            raise FlowerAdapterError(
                f"{where}: the ArrayRecord does not have the global model's arrays"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unexpected {', '.join(extra)}" if extra else "")
                + ". Clients must send back every array they received, under the same keys."
            )
        for key in self.keys:
            shape = tuple(int(s) for s in record[key].shape)
            if shape != self.shapes[key]:
                raise FlowerAdapterError(
                    f"{where}: array {key!r} has shape {shape}, but the global model's has {self.shapes[key]}. "
                    "Clients must send back arrays of the shapes they received."
                )

    def _vector(self, record, role: str) -> torch.Tensor:
        parts = [
            torch.from_numpy(np.ascontiguousarray(record[k].numpy()).reshape(-1)).to(self.dtype)
            for k in self.keys
            if self.roles[k] == role
        ]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=self.dtype)

    def flatten(self, record) -> tuple[torch.Tensor, torch.Tensor]:
        """(trainable vector, buffer vector) of ``record``."""
        return self._vector(record, "trainable"), self._vector(record, "buffer")

    def to_record(self, params: torch.Tensor, buffers: torch.Tensor, template):
        """An ArrayRecord in the global model's key order; integer arrays come from ``template``."""
        sources = {"trainable": params, "buffer": buffers}
        by_name = {s.name: s for s in self.spec.segments}
        out = {}
        for key in self.keys:
            role = self.roles[key]
            if role == "int_buffer":
                out[key] = template[key]
                continue
            seg = by_name[key]
            values = sources[role][seg.slice].detach().cpu().reshape(self.shapes[key]).numpy()
            out[key] = Array(np.ascontiguousarray(values.astype(self.np_dtypes[key], copy=False)))
        return ArrayRecord(out)


def _to_payload(value):
    """A metric as an Update payload entry: a list becomes a float32 tensor, a number a float."""
    if isinstance(value, list):
        return torch.tensor([float(v) for v in value], dtype=torch.float32)
    return float(value)


def _without_payload(content):
    """The reply's metrics without ``payload.*`` entries (uploads, not training figures)."""
    out = {}
    for key, record in content.metric_records.items():
        out[key] = MetricRecord({k: v for k, v in record.items() if not k.startswith(PAYLOAD_PREFIX)})
    return RecordDict(out)


def _metric_value(value):
    """A method's figure as a MetricRecord value (a float or a list of floats), or None."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            return [float(v) for v in value]
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


class _WallClock:
    """Seconds since the strategy was created (a deployment reads the wall clock)."""

    def __init__(self):
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0


# --------------------------------------------------------------------------------------
# The strategy
# --------------------------------------------------------------------------------------


class FedweaveStrategy(_FlowerBase):
    """A Flower (Message API) strategy whose aggregation is a fedweave method.

    Parameters
    ----------
    method
        A registered method name (``"fedadam"``), a dict of ``method.*`` settings
        (``{"name": "fedavgm", "server_momentum": 0.5}``), a full fedweave ``Config``,
        or a fedweave :class:`~fedweave.methods.Strategy` instance.
    params
        ``method.*`` settings merged into ``method`` (server_lr, beta1, num_malicious...).
    client
        ``client.*`` settings some methods read when built (``mu`` for FedProx,
        ``momentum`` for FedNova).
    seed
        The seed given to the method (``ServerContext.seed``).
    num_clients
        The size of the client population the method is told; default: the number of
        nodes seen so far.
    server_data
        ``(x, y)`` tensors held by the server, for methods that need them (FedLAW's proxy set).
    model_factory
        A function returning a fresh model whose ``state_dict`` keys are the arrays', for
        methods that evaluate models on the server (FedLAW).
    client_lr
        The clients' learning rate (``ServerContext.round_lr``), for methods that need it.
    buffer_keys
        fnmatch patterns of array keys aggregated as buffers (plain example-weighted mean).
    **flower_kwargs
        Options of Flower's ``FedAvg`` (``fraction_train``, ``min_available_nodes``,
        ``weighted_by_key``, ``arrayrecord_key``, ``train_metrics_aggr_fn``...).
    """

    def __init__(
        self,
        method: str | dict | Config | Strategy = "fedavg",
        *,
        params: dict | None = None,
        client: dict | None = None,
        seed: int = 0,
        num_clients: int | None = None,
        server_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        model_factory: Any = None,
        client_lr: float | None = None,
        buffer_keys: Iterable[str] = DEFAULT_BUFFER_KEYS,
        **flower_kwargs: Any,
    ) -> None:
        require_flower()
        super().__init__(**flower_kwargs)
        info, strategy, algorithm, cfg, support = _resolve(
            method, params, client, client_lr=client_lr, has_server_data=server_data is not None,
            has_model_factory=model_factory is not None,
        )
        if not support.supported:
            raise UnsupportedMethodError(support.message())
        if num_clients is not None and (isinstance(num_clients, bool) or int(num_clients) < 1):
            raise ConfigError(f"num_clients must be a positive integer; got {num_clients!r}.")
        self.method_name = support.method
        self.method_info = info
        self.fedweave_config = cfg
        self.fedweave_strategy = strategy
        self.client_algorithm = algorithm
        self.support = support
        self.needs = support.needs
        self.seed = int(seed)
        self.fixed_num_clients = None if num_clients is None else int(num_clients)
        self.server_data = server_data
        self.model_factory = model_factory
        self.client_lr = None if client_lr is None else float(client_lr)
        self.buffer_keys = tuple(buffer_keys)
        self.proximal_mu = (
            float(algorithm.mu) if algorithm is not None and getattr(algorithm, "objective", "plain") == "prox" else None
        )
        self.layout: ArrayLayout | None = None
        self.state: ServerState | None = None
        self.context: ServerContext | None = None
        self._global = None  # the global ArrayRecord the replies' deltas refer to
        self._node_index: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._clock = _WallClock()

    # -- Flower's Strategy API ---------------------------------------------------------
    def summary(self) -> None:
        logger.info("fedweave method %r (needs: %s)", self.method_name, ", ".join(sorted(self.needs)) or "nothing extra")
        for duty in self.support.client_duties:
            logger.info("  each ClientApp must %s", duty)
        super().summary()

    def configure_train(self, server_round: int, arrays, config, grid):
        """Record the global arrays (the base of the replies' deltas) and sample nodes."""
        self.initialize(arrays, node_ids=list(grid.get_node_ids()))
        if self.proximal_mu is not None:
            config["proximal-mu"] = self.proximal_mu
        self._check_broadcast()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        """Aggregate the training replies with the fedweave method."""
        if self.state is None:
            raise FlowerAdapterError(
                "aggregate_train was called before the strategy saw the global arrays: call configure_train (as "
                "Strategy.start does) or initialize(arrays) first."
            )
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        for m in replies:
            if m.has_error():
                logger.warning("node %s replied with an error: %s", m.metadata.src_node_id, m.error.reason)
        for node in sorted({int(m.metadata.src_node_id) for m in valid}):
            self._client_index(node)  # nodes not seen in configure_train: numbered in increasing id
        accepted = []
        for msg in valid:
            update = self._to_update(msg)
            if update.is_finite():
                accepted.append((update, msg))
            else:
                logger.warning("dropped the non-finite update of node %s", msg.metadata.src_node_id)
        if not accepted:
            return None, None
        accepted.sort(key=lambda pair: pair[0].client_id)
        updates = [u for u, _ in accepted]
        for u in updates:
            self._sizes[u.client_id] = u.num_examples
        ctx = self._refresh_context()
        self.state.round = int(server_round) - 1  # rounds completed before this one, as in fedweave's engine
        try:
            state = self.fedweave_strategy.aggregate(updates, self.state, ctx)
        except KeyError as exc:
            raise FlowerAdapterError(
                f"Method {self.method_name!r} looked for {exc} in the client updates, which the Flower replies did "
                f"not carry. If it is a payload, each ClientApp must send it as metric "
                f"'{PAYLOAD_PREFIX}{exc.args[0] if exc.args else '<key>'}'."
            ) from None
        if not bool(torch.isfinite(state.params).all()) or not bool(torch.isfinite(state.buffers).all()):
            raise DivergedError(
                f"The global model became non-finite in round {server_round}; lower the clients' learning rate or "
                f"check the method's settings."
            )
        state.round = int(server_round)
        self.state = state
        self._global = self.layout.to_record(state.params, state.buffers, self._global)
        metrics = self.train_metrics_aggr_fn([_without_payload(m.content) for _, m in accepted], self.weighted_by_key)
        for key, value in self.fedweave_strategy.metrics(state).items():
            value = _metric_value(value)
            if value is not None:
                metrics[f"fedweave.{key}"] = value
        return self._global, metrics

    # -- fedweave side -------------------------------------------------------------------
    def initialize(self, arrays, node_ids: Iterable[int] | None = None) -> ServerState:
        """Take ``arrays`` as the global model (initialising the method on first use).

        Later calls keep the method's state (optimizer moments...) and only replace the
        global parameters if they differ. ``node_ids`` registers nodes in increasing id.
        """
        for nid in sorted(int(n) for n in (node_ids or ())):
            self._client_index(nid)
        if self.layout is None:
            self.layout = ArrayLayout(arrays, self.buffer_keys)
        self.layout.check(arrays, "The global arrays given to the strategy")
        params, buffers = self.layout.flatten(arrays)
        if self.state is None:
            ctx = self._refresh_context()
            self.state = self.fedweave_strategy.init(params, buffers, ctx)
        elif not (torch.equal(params, self.state.params) and torch.equal(buffers, self.state.buffers)):
            self.state.params, self.state.buffers = params, buffers
        self._global = arrays
        return self.state

    def _client_index(self, node_id: int) -> int:
        if node_id not in self._node_index:
            self._node_index[node_id] = len(self._node_index)
        return self._node_index[node_id]

    def _refresh_context(self) -> ServerContext:
        n = max(self.fixed_num_clients or 0, len(self._node_index), 1)
        sizes = np.zeros(n, dtype=np.int64)
        for cid, size in self._sizes.items():
            if cid < n:
                sizes[cid] = size
        if self.context is None:
            self.context = ServerContext(
                spec=self.layout.spec, num_clients=n, client_sizes=sizes, clock=self._clock, seed=self.seed,
                server_data=self.server_data, round_lr=self.client_lr or 0.0, model_factory=self.model_factory,
            )
        else:
            self.context.num_clients, self.context.client_sizes = n, sizes
        return self.context

    def _check_broadcast(self) -> None:
        ids = sorted(self._node_index.values()) or [0]
        messages = self.fedweave_strategy.configure(ids, self.state, self._refresh_context())
        extras = sorted({k for b in messages.values() for k in b.payload})
        if extras:
            raise UnsupportedMethodError(
                f"Method {self.method_name!r} sends {', '.join(extras)} to clients besides the global model, which the "
                f"Flower adapter cannot send; run it with `fedweave run`."
            )

    def _to_update(self, msg) -> Update:
        node = int(msg.metadata.src_node_id)
        where = f"The training reply of node {node}"
        content = msg.content
        arrays = content.array_records
        if self.arrayrecord_key in arrays:
            record = arrays[self.arrayrecord_key]
        elif len(arrays) == 1:
            record = next(iter(arrays.values()))
        else:
            raise FlowerAdapterError(
                f"{where} has {len(arrays)} ArrayRecords ({', '.join(arrays) or 'none'}); it must carry one, "
                f"preferably under the key {self.arrayrecord_key!r}."
            )
        if len(content.metric_records) != 1:
            raise FlowerAdapterError(
                f"{where} has {len(content.metric_records)} MetricRecords; it must carry exactly one, with "
                f"{self.weighted_by_key!r} (its number of training examples)."
            )
        metrics = next(iter(content.metric_records.values()))
        self.layout.check(record, where)
        n = metrics.get(self.weighted_by_key)
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
            raise FlowerAdapterError(
                f"{where} lacks a usable {self.weighted_by_key!r} metric (found {n!r}); each ClientApp must send its "
                f"number of training examples as a non-negative number."
            )
        steps = metrics.get(NUM_STEPS_METRIC)
        if "num_steps" in self.needs and (not isinstance(steps, (int, float)) or isinstance(steps, bool) or steps < 1):
            raise FlowerAdapterError(
                f"{where} lacks the metric {NUM_STEPS_METRIC!r} (found {steps!r}), which method "
                f"{self.method_name!r} needs: each ClientApp must send its number of local steps."
            )
        payload, scalars = {}, {}
        for key, value in metrics.items():
            if key.startswith(PAYLOAD_PREFIX):
                payload[key[len(PAYLOAD_PREFIX):]] = _to_payload(value)
            elif key not in (self.weighted_by_key, NUM_STEPS_METRIC) and isinstance(value, (int, float)):
                scalars[key] = float(value)
        for need in sorted(self.needs):
            key = need[len("payload:"):]
            if need.startswith("payload:") and key not in payload:
                raise FlowerAdapterError(
                    f"{where} lacks the metric '{PAYLOAD_PREFIX}{key}', which method {self.method_name!r} needs; each "
                    f"ClientApp must send it (a number or a list of numbers)."
                )
        params, buffers = self.layout.flatten(record)
        return Update(
            client_id=self._client_index(node),
            base_version=self.state.version,
            delta=params - self.state.params,
            buffers=buffers,
            num_examples=int(round(n)),
            num_steps=int(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) else 0,
            metrics=scalars,
            payload=payload,
        )


# --------------------------------------------------------------------------------------
# python -m fedweave.integrations.flower METHOD [--set method.key=value ...]
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Say whether a method runs on Flower and what ClientApps must send; 2 on refusal."""
    import argparse

    from ..config import parse_overrides

    parser = argparse.ArgumentParser(
        prog="python -m fedweave.integrations.flower",
        description="Check whether a fedweave method runs as a Flower strategy.",
    )
    parser.add_argument("method", help="registered method name")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="method.key=value or client.key=value (YAML value); repeatable")
    parser.add_argument("--client-lr", type=float, default=None, help="the clients' learning rate")
    parser.add_argument("--server-data", action="store_true", help="the server will hold a labelled set")
    parser.add_argument("--model-factory", action="store_true", help="the server will have the model")
    args = parser.parse_args(argv)
    try:
        require_flower()
        tree = parse_overrides(args.overrides)
        unknown = sorted(set(tree) - {"method", "client"})
        if unknown:
            raise ConfigError(f"--set takes method.* and client.* keys here; got {', '.join(unknown)}.")
        support = flower_support(
            {**tree.get("method", {}), "name": args.method}, client=tree.get("client"),
            client_lr=args.client_lr, server_data=args.server_data, model_factory=args.model_factory,
        )
    except FedweaveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not support.supported:
        print(f"error: {support.message()}", file=sys.stderr)
        return 2
    print(support.message())
    return 0


if __name__ == "__main__":
    sys.exit(main())
