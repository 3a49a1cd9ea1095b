"""Composable server stages: weighting → combiner → server optimizer.

A staged method computes, for the cohort's deltas Δ_k (rows of a ``[K, P]`` matrix),

    p = normalise(weighting(updates))          e.g. n_k / Σ n_j
    d = combiner(Δ, p)                          e.g. Σ p_k Δ_k
    w_g, opt_state = server_opt.step(w_g, d)   e.g. w_g + d (FedAvg)

so a weighting from one paper combines with a combiner or optimizer from another. Float
buffers (BatchNorm statistics) always get a plain example-weighted mean.

A stage registered with ``params=`` (a pydantic model) is a *factory*
``fn(config, params) -> stage``, built once per run from its validated ``method.<key>``
values (FedDisco's ``a``, ``b``, ``metric``), whichever preset the run uses. A stage
object may also carry optional hooks, found by attribute: ``init(state, ctx)`` (its
entries of ``state.extra``), ``broadcast_payload(client_id, state, ctx) -> dict``
(per-client downlink extras), ``metrics(state) -> dict`` (per-round figures) and
``client`` (a :class:`StageClient`: what the stage needs from each client, e.g. a label
histogram, added to the client's upload).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..aggregate import weighted_mean
from ..core.errors import ConfigError, unknown_name
from ..core.messages import Update
from ..core.registration import claim
from ..core.strategy import ServerContext, ServerState, Strategy, average_buffers, size_weights, stack_deltas

Weighting = Callable[[list[Update], ServerState, ServerContext], torch.Tensor]
# (deltas [K, P], weights [K], server state, context) -> combined delta [P]
Combiner = Callable[[torch.Tensor, torch.Tensor, ServerState, ServerContext], torch.Tensor]


def size_weighting(updates, state, ctx) -> torch.Tensor:
    """p_k ∝ n_k, the number of examples the client trained on (FedAvg)."""
    return size_weights(updates)


def uniform_weighting(updates, state, ctx) -> torch.Tensor:
    """p_k = 1/K."""
    return torch.ones(len(updates), dtype=torch.float64)


WEIGHTINGS: dict[str, tuple[Weighting, str]] = {
    "size": (size_weighting, "proportional to the client's number of examples"),
    "uniform": (uniform_weighting, "equal weights"),
}


def mean_combiner(deltas: torch.Tensor, weights: torch.Tensor, state=None, ctx=None) -> torch.Tensor:
    return weighted_mean(deltas, weights.to(deltas.dtype))


# its maths follows the device of its inputs: the staged strategy may run it on executor.device
mean_combiner.device_safe = True


COMBINERS: dict[str, tuple[Combiner, str]] = {
    "mean": (mean_combiner, "weighted mean of the deltas"),
}


# (kind, name) -> pydantic model of the stage's own parameters (``method.<key>``)
STAGE_PARAMS: dict[tuple[str, str], Any] = {}


def register_weighting(name: str, fn: Weighting, description: str, params=None, *, replace: bool = False) -> Weighting:
    """Make a weighting available as ``method.weighting: <name>`` (methods call this).

    With ``params`` (a pydantic model), ``fn`` is a factory ``fn(config, params) -> weighting``.
    """
    claim("weighting", name, WEIGHTINGS, replace)
    WEIGHTINGS[name] = (fn, description)
    if params is not None:
        STAGE_PARAMS[("weighting", name)] = params
    return fn


def register_combiner(name: str, fn: Combiner, description: str, params=None, *, replace: bool = False) -> Combiner:
    """Make a combiner available as ``method.combiner: <name>`` (methods call this).

    With ``params`` (a pydantic model), ``fn`` is a factory ``fn(config, params) -> combiner``.
    """
    claim("combiner", name, COMBINERS, replace)
    COMBINERS[name] = (fn, description)
    if params is not None:
        STAGE_PARAMS[("combiner", name)] = params
    return fn


def stage_params(kind: str, name: str):
    """The parameter model of stage ``name`` of ``kind`` (weighting / combiner), or None."""
    return STAGE_PARAMS.get((kind, name))


def make_stage(kind: str, name: str, config=None, values: dict[str, Any] | None = None):
    """The ready stage ``name``: the registered function, or its factory's product."""
    fn = get_weighting(name) if kind == "weighting" else get_combiner(name)
    model = STAGE_PARAMS.get((kind, name))
    if model is None:
        return fn
    from pydantic import ValidationError

    try:
        params = model.model_validate(values or {})
    except ValidationError as exc:
        problems = "; ".join(f"method.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"Invalid parameters for {kind} {name!r}: {problems}. Its parameters: {', '.join(model.model_fields)}."
        ) from None
    return fn(config, params)


class StageClient:
    """The client side of a server stage: what it adds to each upload, and the client
    state it keeps (under its own keys). ``upload`` runs after local training."""

    stateful = False

    def upload(self, job, worker, update: Update, state: dict | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``(payload entries, client-state entries or None)``."""
        return {}, None


class WithStageClients:
    """A client algorithm plus the client side of the stages of its server (delegates
    everything else to the wrapped algorithm)."""

    def __init__(self, inner, parts):
        self.inner = inner
        self.parts = tuple(parts)
        self.stateful = bool(getattr(inner, "stateful", False) or any(p.stateful for p in self.parts))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("inner", "parts"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def train(self, job, worker, generator):
        out = self.inner.train(job, worker, generator)
        state, changed = (out.state, True) if out.state is not None else (job.state, False)
        for part in self.parts:
            payload, entries = part.upload(job, worker, out.update, state)
            out.update.payload.update(payload)
            if entries is not None:
                state, changed = {**(state or {}), **entries}, True
        if changed:
            out.state = state
        return out


def get_weighting(name: str) -> Weighting:
    if name not in WEIGHTINGS:
        raise unknown_name("weighting", name, WEIGHTINGS)
    return WEIGHTINGS[name][0]


def get_combiner(name: str) -> Combiner:
    if name not in COMBINERS:
        raise unknown_name("combiner", name, COMBINERS)
    return COMBINERS[name][0]


def combine(combiner, deltas: torch.Tensor, weights: torch.Tensor, state, ctx) -> torch.Tensor:
    """``combiner(deltas, weights, state, ctx)``, on ``ctx.device`` when the combiner says
    its maths follows its inputs' device (``device_safe``: the mean and the robust
    combiners), the result back beside the server's state; elsewhere where the updates are."""
    device = getattr(ctx, "device", None)
    if device is None or device.type == deltas.device.type or not getattr(combiner, "device_safe", False):
        return combiner(deltas, weights, state, ctx)
    return combiner(deltas.to(device), weights.to(device), state, ctx).to(deltas.device)


class StagedStrategy(Strategy):
    # buffered mode merges full buffers with `aggregate`, exactly like a sync round;
    # async mode would hand single updates to a cohort-mean, which is not what these mean
    modes = ("sync", "buffered")

    def __init__(self, name: str, weighting: str, combiner: str, server_opt, stages: tuple = ()):
        """``stages``: ready (weighting, combiner) objects, built by :func:`make_stage`
        (default: the registered functions named ``weighting`` and ``combiner``)."""
        self.name = name
        self.weighting_name = weighting
        self.combiner_name = combiner
        self.weighting, self.combiner = stages or (get_weighting(weighting), get_combiner(combiner))
        self.server_opt = server_opt

    def _hooks(self, hook: str) -> list:
        return [getattr(s, hook) for s in (self.weighting, self.combiner) if hasattr(s, hook)]

    def init(self, params, buffers, ctx) -> ServerState:
        state = super().init(params, buffers, ctx)
        state.extra["opt"] = self.server_opt.init(state.params)
        for init in self._hooks("init"):
            init(state, ctx)
        return state

    def configure(self, client_ids, state, ctx):
        shared = super().configure(client_ids, state, ctx)
        hooks = self._hooks("broadcast_payload")
        if not hooks:
            return shared
        return {cid: b.with_payload(**{k: v for h in hooks for k, v in h(cid, state, ctx).items()}) for cid, b in shared.items()}

    def metrics(self, state) -> dict:
        return {k: v for hook in self._hooks("metrics") for k, v in hook(state).items()}

    def aggregate(self, updates: list[Update], state: ServerState, ctx: ServerContext) -> ServerState:
        if not updates:
            return state
        deltas = stack_deltas(updates)
        weights = self.weighting(updates, state, ctx)
        combined = combine(self.combiner, deltas, weights, state, ctx)
        state.params, state.extra["opt"] = self.server_opt.step(state.params, combined, state.extra["opt"])
        state.buffers = average_buffers(updates, state)
        state.version += 1
        return state
