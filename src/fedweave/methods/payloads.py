"""What a method's clients upload beyond the standard update, declared so that a server can
check an upload before it reaches the method's maths.

Each method with extra uploads declares a :class:`PayloadSchema` in its own module: on its
registration (``MethodInfo.payload_schema``), or, for a stage that any preset may use
(FedDisco's label histograms, FedCE's contribution), as a ``payload_schema`` attribute of
the stage. :func:`method_payload_schema` joins them for a built method.

A deployment server cannot trust its clients: an update without SCAFFOLD's ``delta_c``
would end the run with a ``KeyError`` inside the aggregation, a FedNova update with
``num_steps = 0`` divides by zero, a q-FFL update without its loss ends the server. The
server checks every update against the schema (:meth:`PayloadSchema.check`) and rejects
what does not fit with the reason, before it is admitted. The simulator's clients are
fedweave's own code, so it does not check.

Shapes are given against the run (:class:`PayloadDims`): ``"params"`` is the model's
trainable vector, ``"classes"`` one entry per class, ``"clients"`` one per client; an
int is a fixed size; ``"broadcast:NAME"`` (the whole shape) is the shape of the entry NAME
that the client's task carried (PGFed's ``a``; such an entry is required only when the
task carried NAME); a callable ``(dims) -> tuple`` covers the rest (Ferret's
coefficients depend on its block size); ``check`` adds a method's own test (FRL's
rankings must be permutations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

Dim = Union[str, int]
Shape = Union[tuple, Callable[["PayloadDims"], tuple]]

SCALAR = ()  # a plain number (it travels inline in the header)


@dataclass(frozen=True)
class PayloadDims:
    """The sizes a schema's shapes refer to, for one run."""

    params: int  # entries of the trainable vector
    classes: int
    clients: int
    dtype: torch.dtype = torch.float32  # the trainable vector's dtype
    config: Any = None  # the run's config (for shapes that depend on method parameters)

    def resolve(self, shape: Shape) -> tuple[int, ...] | None:
        if callable(shape):
            return tuple(shape(self))
        out = []
        for d in shape:
            if d == "params":
                out.append(self.params)
            elif d == "classes":
                out.append(self.classes)
            elif d == "clients":
                out.append(self.clients)
            elif d is None:
                out.append(None)  # any length
            else:
                out.append(int(d))
        return tuple(out)


@dataclass(frozen=True)
class Entry:
    """One uploaded payload entry: a number (``shape=SCALAR``) or a floating-point tensor
    (``shape`` a tuple of dims, ``None`` for any length), optional bounds on its values.
    Non-finite values pass here: the server rejects every non-finite update anyway, and
    the ledger must count it as non-finite (a round of nothing else has diverged)."""

    name: str
    shape: Shape = SCALAR
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    required: bool = True
    integer: bool = False  # an integer tensor (or number)
    what: str = ""  # a few words for messages: "SCAFFOLD's control-variate change"
    # a method's own test of the value (the reason it is wrong, or None); replaces the
    # shape and range checks
    # (value, dims, the task's broadcast or None)
    custom: Optional[Callable[[Any, PayloadDims, Any], Optional[str]]] = None

    def expected(self, sent) -> Shape | None:
        """The shape this entry must have given the task's broadcast ``sent`` (None: no entry expected)."""
        if isinstance(self.shape, str) and self.shape.startswith("broadcast:"):
            ref = (getattr(sent, "payload", None) or {}).get(self.shape[len("broadcast:"):])
            return tuple(ref.shape) if isinstance(ref, torch.Tensor) else None
        return self.shape

    def check(self, value: Any, dims: PayloadDims, shape: Shape | None = None, sent=None) -> str | None:
        label = f"payload {self.name!r}" + (f" ({self.what})" if self.what else "")
        if self.custom is not None:
            reason = self.custom(value, dims, sent)
            return f"{label}: {reason}" if reason else None
        shape = self.shape if shape is None else shape
        if self.shape == SCALAR:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{label} must be a number, got {_kind(value)}"
            if self.integer and not float(value).is_integer():
                return f"{label} must be an integer, got {value!r}"
            return _range(label, float(value), float(value), self.minimum, self.maximum)
        if not isinstance(value, torch.Tensor):
            return f"{label} must be a tensor, got {_kind(value)}"
        want = dims.resolve(shape)
        got = tuple(value.shape)
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            shown = tuple("any" if w is None else w for w in want)
            return f"{label} has shape {got}; expected {shown}"
        if self.integer:
            if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
                return f"{label} must hold integers, got dtype {value.dtype}"
        elif not value.dtype.is_floating_point:
            return f"{label} must hold floating-point values, got dtype {value.dtype}"
        elif isinstance(shape, tuple) and "params" in shape and value.dtype != dims.dtype:
            return f"{label} has dtype {value.dtype}; like the model's trainable vector it must be {dims.dtype}"
        if value.numel() == 0:
            return None
        v = value.to(torch.float64)
        if not bool(torch.isfinite(v).all()):
            return None  # the finiteness check judges it (a non-finite update counts as one)
        return _range(label, float(v.min()), float(v.max()), self.minimum, self.maximum)


@dataclass(frozen=True)
class PayloadSchema:
    """The extra uploads of a method (``entries``) and bounds on the update's own numbers
    that its maths relies on (``min_steps``: FedNova divides by the step count)."""

    entries: tuple[Entry, ...] = ()
    min_steps: int = 0
    steps_why: str = ""
    # the payload stands in for the model update (Ferret's coefficients, FRL's rankings):
    # the upload carries neither 'delta' nor 'params'
    replaces_model: bool = False
    # the Update subclass the method's clients send (its num_bytes counts the upload, e.g.
    # FRL's permutations at ⌈log₂ n⌉ bits an id): a received update is rebuilt as one
    update_class: type | None = None

    def __or__(self, other: "PayloadSchema") -> "PayloadSchema":
        names = {e.name for e in self.entries}
        return PayloadSchema(self.entries + tuple(e for e in other.entries if e.name not in names),
                             max(self.min_steps, other.min_steps), self.steps_why or other.steps_why,
                             self.replaces_model or other.replaces_model, self.update_class or other.update_class)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(e.name for e in self.entries)

    def check(self, update, dims: PayloadDims, sent=None) -> str | None:
        """Why ``update`` does not fit the schema, or None. ``sent``: the Broadcast of the
        client's task (for shapes given as ``"broadcast:NAME"``)."""
        if update.num_steps < self.min_steps:
            why = f" ({self.steps_why})" if self.steps_why else ""
            return f"the update claims {update.num_steps} local steps; this method needs at least {self.min_steps}{why}"
        payload = update.payload
        for e in self.entries:
            shape = e.expected(sent)
            if shape is None:  # tied to a broadcast entry this task did not carry
                continue
            if e.name not in payload:
                if e.required:
                    return f"the update lacks payload {e.name!r}" + (f" ({e.what})" if e.what else "") + \
                        " that this method's aggregation needs"
                continue
            reason = e.check(payload[e.name], dims, shape, sent)
            if reason is not None:
                return reason
        return None


NO_PAYLOAD = PayloadSchema()


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _range(label: str, lo: float, hi: float, minimum, maximum) -> str | None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None  # the finiteness check judges it (a non-finite update counts as one)
    if minimum is not None and lo < minimum:
        return f"{label} has a value {lo:g} below its minimum {minimum:g}"
    if maximum is not None and hi > maximum:
        return f"{label} has a value {hi:g} above its maximum {maximum:g}"
    return None


def _own(obj, name: str):
    import inspect

    return inspect.getattr_static(obj, name, None) if obj is not None else None


def method_payload_schema(info, strategy) -> PayloadSchema:
    """The schema of a built method: its registration's, plus what its stages declare."""
    schema = getattr(info, "payload_schema", None) or NO_PAYLOAD
    for attr in ("weighting", "combiner"):
        stage = getattr(strategy, attr, None)
        declared = _own(stage, "payload_schema")
        if isinstance(declared, PayloadSchema):
            schema = schema | declared
    return schema


def run_dims(exp) -> PayloadDims:
    """The dims of a built experiment."""
    state = exp.initial_params
    return PayloadDims(params=int(state.numel()), classes=int(exp.data.num_classes), clients=int(exp.data.num_clients),
                       dtype=state.dtype, config=exp.config)


__all__ = ["Entry", "PayloadSchema", "PayloadDims", "NO_PAYLOAD", "SCALAR", "method_payload_schema", "run_dims"]
