"""What a method needs from the code that runs it, beyond plain SGD on the clients and
an upload of the trained weights with its example count.

One :class:`MethodNeeds` per method answers it for every runner: the Flower adapter
(what a ClientApp must send, what it refuses), the vectorized executor (which runs only
plain client training) and anything else that must know. It is the union of

* what the method's registration declares (``MethodInfo.needs``): needs the code does
  not show and that a runner must know before it builds the method (FedLAW's server-held
  data, FLTrust's training on the server; FedCE's, whose build checks fedweave's own
  schedule);
* what is derived from the built code, where that is reliable: a client algorithm that
  overrides a training hook runs its own client logic, a ``stateful`` one keeps
  per-client state, one that overrides ``personalize`` keeps a personal model, one that
  overrides ``fetch_fraction`` fetches a model mid-training, a strategy that overrides
  ``configure``/``broadcast_payload`` (or a stage with a ``broadcast_payload`` hook)
  sends more than the global model.

A part (strategy, stage, client algorithm, stage client) may instead declare a ``needs``
attribute: a :class:`MethodNeeds`, or a set of the names of :meth:`MethodNeeds.names`.
It replaces the derivation for that part: FedNova's strategy says it reads the step
counts and the round's learning rate; a stage client that only adds a payload
(FedDisco's label histogram) says so instead of being taken for arbitrary client logic.
Both declarations sit in the method's own module.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Iterable, Optional

#: Client-algorithm hooks whose override means client logic beyond plain SGD.
CLIENT_LOGIC_HOOKS = ("train", "grad_hooks", "loss_fn", "upload_payload", "build_update", "update_from", "next_state")
#: Server hooks whose override means more than the global model goes to the clients.
BROADCAST_HOOKS = ("configure", "broadcast_payload")


@dataclass(frozen=True)
class MethodNeeds:
    """Needs beyond plain client SGD and an upload of weights plus example count.

    ``client_logic`` and ``broadcast`` are None when not needed, else a description
    (possibly empty) used in messages.
    """

    client_logic: Optional[str] = None  # client-side code beyond plain SGD
    client_state: bool = False  # per-client state kept between rounds
    upload: frozenset[str] = frozenset()  # extra upload payload entries, by name
    broadcast: Optional[str] = None  # data beyond the global model sent down, or per-client messages
    server_data: bool = False  # a server-held labelled set
    server_model: bool = False  # the model itself on the server (a factory)
    server_training: bool = False  # training with fedweave's trainer on the server
    num_steps: bool = False  # each upload's number of local steps
    round_lr: bool = False  # the clients' learning rate of the round
    personal_model: bool = False  # a client model of its own for personalized evaluation
    mid_training_fetch: bool = False  # a fresh global model fetched part-way through training
    other: frozenset[str] = frozenset()  # declared names this vocabulary does not know

    def __or__(self, other: "MethodNeeds") -> "MethodNeeds":
        merged = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, frozenset):
                merged[f.name] = a | b
            elif isinstance(a, bool):
                merged[f.name] = a or b
            else:  # descriptions: the first one given wins
                merged[f.name] = a if a is not None else b
        return MethodNeeds(**merged)

    @property
    def client_side(self) -> bool:
        """Whether clients must run anything but plain local SGD and the standard upload."""
        return (self.client_logic is not None or self.client_state or bool(self.upload) or self.personal_model
                or self.mid_training_fetch)

    def names(self) -> frozenset[str]:
        """The needs as names: ``client_logic``, ``client_state``, ``payload:<key>``,
        ``broadcast``, ``server_data``, ``model_factory``, ``server_training``,
        ``num_steps``, ``round_lr``, ``personal_model``, ``mid_training_fetch``, plus
        any unknown declared names."""
        out = set(self.other) | {f"payload:{k}" for k in self.upload}
        for name, value in (("client_logic", self.client_logic is not None), ("client_state", self.client_state),
                            ("broadcast", self.broadcast is not None), ("server_data", self.server_data),
                            ("model_factory", self.server_model), ("server_training", self.server_training),
                            ("num_steps", self.num_steps), ("round_lr", self.round_lr),
                            ("personal_model", self.personal_model), ("mid_training_fetch", self.mid_training_fetch)):
            if value:
                out.add(name)
        return frozenset(out)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "MethodNeeds":
        """The inverse of :meth:`names` (unknown names are kept in ``other``)."""
        flags = {"client_state": "client_state", "server_data": "server_data", "model_factory": "server_model",
                 "server_training": "server_training", "num_steps": "num_steps", "round_lr": "round_lr",
                 "personal_model": "personal_model", "mid_training_fetch": "mid_training_fetch"}
        kwargs: dict = {}
        upload, other = set(), set()
        for name in map(str, names):
            if name in flags:
                kwargs[flags[name]] = True
            elif name in ("client_logic", "broadcast"):
                kwargs[name] = ""
            elif name.startswith("payload:") and len(name) > len("payload:"):
                upload.add(name[len("payload:"):])
            else:
                other.add(name)
        return cls(upload=frozenset(upload), other=frozenset(other), **kwargs)


NOTHING = MethodNeeds()


def _own(obj, name: str):
    """``obj``'s attribute ``name`` from its instance or class, never through a wrapper's
    ``__getattr__`` (DP and attack wrappers delegate to the algorithm they wrap)."""
    return inspect.getattr_static(obj, name, None) if obj is not None else None


def declared(obj) -> MethodNeeds | None:
    """The needs ``obj`` declares in a ``needs`` attribute, or None."""
    needs = _own(obj, "needs")
    if needs is None or isinstance(needs, MethodNeeds):
        return needs
    return MethodNeeds.from_names(needs)


def _overrides(obj, base, hooks) -> list[str]:
    return [h for h in hooks if getattr(type(obj), h, None) is not getattr(base, h, None)]


def client_needs(client) -> MethodNeeds:
    """Needs of a client algorithm (or of a wrapper around one: stage clients, DP, attacks)."""
    from ..core.client import ClientAlgorithm

    if client is None:
        return NOTHING
    inner, parts = _own(client, "inner"), _own(client, "parts")
    if inner is not None and parts is not None and not isinstance(client, ClientAlgorithm):
        needs = client_needs(inner)  # an algorithm plus the client parts of its server's stages
        for part in parts:
            own = declared(part)
            if own is None:
                own = MethodNeeds(client_logic=f"{type(part).__name__} computes an upload on the client")
            needs = needs | own | MethodNeeds(client_state=bool(getattr(part, "stateful", False)))
        return needs
    needs = MethodNeeds(client_state=bool(getattr(client, "stateful", False)))
    own = declared(client)
    if own is not None:
        return needs | own
    hooks = _overrides(client, ClientAlgorithm, CLIENT_LOGIC_HOOKS)
    return needs | MethodNeeds(
        client_logic=f"{type(client).__name__} overrides {', '.join(hooks)}" if hooks else None,
        personal_model=bool(_overrides(client, ClientAlgorithm, ("personalize",))),
        mid_training_fetch=bool(_overrides(client, ClientAlgorithm, ("fetch_fraction",))),
    )


def strategy_needs(strategy) -> MethodNeeds:
    """Needs of a strategy (a staged one: of its stages)."""
    from ..core.strategy import Strategy
    from .stages import StagedStrategy

    own = declared(strategy)
    if own is not None:
        return own
    if isinstance(strategy, StagedStrategy) and not _overrides(strategy, StagedStrategy, BROADCAST_HOOKS):
        needs = NOTHING
        for attr in ("weighting", "combiner"):
            stage = getattr(strategy, attr, None)
            stage_own = declared(stage)
            if stage_own is not None:
                needs = needs | stage_own
            elif hasattr(stage, "broadcast_payload"):
                needs = needs | MethodNeeds(broadcast=f"the {attr} stage {type(stage).__name__} sends per-client extras")
        return needs
    hooks = _overrides(strategy, Strategy, BROADCAST_HOOKS)
    return MethodNeeds(broadcast=f"{type(strategy).__name__} overrides {', '.join(hooks)}") if hooks else NOTHING


def method_needs(info, strategy, client) -> MethodNeeds:
    """Everything a built method needs: its declaration, then what its strategy and client show."""
    base = info.needs if info is not None else NOTHING
    return base | strategy_needs(strategy) | client_needs(client)


__all__ = ["MethodNeeds", "client_needs", "strategy_needs", "method_needs", "declared"]
