"""Attacks: malicious clients that poison their data or their updates.

The threat model is ``attack.*`` in the config; the defense never reads it (a defense's
own assumption is ``method.num_malicious``). ``round(fraction · N)`` malicious clients are
drawn once from ``fedweave.rng.numpy_rng(seed, "attack")``; they act in rounds
``start_round … end_round`` (1-based, as ``round`` in ``metrics.jsonl``) and behave
honestly otherwise. Attacks wrap the client's behaviour and never change the method's
code:

Data poisoning (the attacker trains with the method's own client algorithm on poisoned
data; a method may name a different algorithm for attackers through
``attacker_algorithm()`` — FLIP's attackers do not run FLIP's hardening):

* ``label_flip`` (Fang et al. 2020; Tolpegin et al. 2020): every training label ``y``
  becomes ``C − 1 − y``; with ``attack.source`` only that class is relabelled, as
  ``attack.target``.
* ``backdoor`` (BadNets, Gu et al. 2017; DBA, Xie et al. 2020): each round a fresh
  ``poison_fraction`` of the attacker's examples whose label is not the target get the
  trigger (:mod:`fedweave.threats.triggers`; one piece per attacker for ``dba``) and the
  target label. ``attack.scale`` > 1 boosts the update (model replacement, Bagdasaryan et
  al. 2020).

Model poisoning on the attacker's own honest update Δ (applied on the client, so the
uplink carries the malicious update):

* ``sign_flip``: Δ' = −s·Δ (s = ``attack.scale``, default 1);
* ``scaling``: Δ' = s·Δ (default s = 10);
* ``gaussian``: Δ' ~ N(0, s² I) (default s = 1), independent of Δ.

Colluding model poisoning, applied to the round's cohort before aggregation (a cohort
hook), from a reference set R of updates: the round's benign updates when
``attack.sees_benign`` is true, otherwise the attackers' own honest updates. With
μ = mean(R) and σ = the coordinate-wise standard deviation of R (unbiased; 0 for |R| = 1),
every attacker of the round sends the same Δ':

* ``alie`` (Baruch et al., "A Little Is Enough", NeurIPS 2019): Δ' = μ − z·σ with
  ``s = ⌊n/2 + 1⌋ − m``, ``z = Φ⁻¹((n − s)/n)`` for n clients in the cohort of which m are
  malicious (``attack.z`` overrides);
* ``minmax`` / ``minsum`` (Shejwalkar & Houmansadr, NDSS 2021): Δ' = μ − γ·d with
  d = σ (``deviation: std``), μ/‖μ‖ (``unit_vec``) or sign(μ) (``sign``), and γ the largest
  value in [0, γ_max] (``attack.scale``, default 10; bisection to 1e-5·γ_max) such that
  min-max: ``max_i ‖Δ' − b_i‖ ≤ max_{i,j} ‖b_i − b_j‖``;
  min-sum: ``Σ_i ‖Δ' − b_i‖² ≤ min_j Σ_i ‖b_j − b_i‖²`` over b ∈ R. The bound is the
  *minimum* over the reference updates (``attack.minsum_bound: min``, the default), as in
  the authors' official code (the NDSS'21 repository's min-sum search compares against the
  smallest benign score): the malicious update then scores better than every benign one
  under a Krum-style sum-of-distances rule. ``minsum_bound: max`` uses the largest benign
  score instead, a weaker constraint (larger γ) that is not the official attack. γ = 0
  always satisfies every bound (the mean is no farther than the farthest pair; it
  minimises the sum of squares, so its sum is ≤ every benign one), so the search is well
  defined.

A method whose uploads are not deltas says through its registration's threat adapter
(``MethodInfo.threats``, :class:`fedweave.methods.threat_adapter.ThreatAdapter`) which
attacks are undefined for it and which client attack it carries out on the whole cohort
instead (a rank-upload method's reversed aggregate ranking); such an attack then runs in
the cohort hook, where ``attack.sees_benign`` applies to it too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.rng import numpy_rng, torch_generator
from ..methods import get_method
from ..methods.threat_adapter import DELTA_UPLOADS, ThreatAdapter
from .triggers import Trigger, make_trigger

DATA_POISONING = ("label_flip", "backdoor")
CLIENT_POISONING = ("sign_flip", "gaussian", "scaling")
COLLUDING = ("alie", "minmax", "minsum")
DEFAULT_SCALE = {"sign_flip": 1.0, "scaling": 10.0, "gaussian": 1.0, "backdoor": 1.0, "minmax": 10.0, "minsum": 10.0}


# -- who is malicious -----------------------------------------------------------------


def malicious_clients(seed: int, num_clients: int, fraction: float) -> list[int]:
    """The ``round(fraction · N)`` malicious client ids, drawn from ``(seed, "attack")``."""
    m = int(round(fraction * num_clients))
    if m == 0:
        return []
    rng = numpy_rng(seed, "attack")
    return sorted(int(c) for c in rng.choice(num_clients, size=m, replace=False))


# -- the definitions, as pure functions ------------------------------------------------


def flip_labels(y: torch.Tensor, num_classes: int, source: int | None = None, target: int | None = None) -> torch.Tensor:
    """``C − 1 − y`` for every label; with ``source``, only ``source`` becomes ``target``."""
    if source is None:
        return (num_classes - 1) - y
    return torch.where(y == source, torch.full_like(y, int(target)), y)


def sign_flip(delta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return -scale * delta


def scaling(delta: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return scale * delta


def gaussian(like: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype) * std


def alie_z(n: int, m: int) -> float:
    """Baruch et al.'s z_max for n clients of which m are malicious."""
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)  # s ≤ 0 or s ≥ n: clamp to a finite quantile
    return NormalDist().inv_cdf(p)


def _mean_std(reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = reference.mean(dim=0)
    if reference.shape[0] < 2:
        return mu, torch.zeros_like(mu)
    return mu, reference.std(dim=0, correction=1)


def alie(reference: torch.Tensor, n: int, m: int, z: float | None = None) -> torch.Tensor:
    """Δ' = μ − z·σ over the reference updates ``[R, P]``."""
    mu, sigma = _mean_std(reference)
    return mu - (alie_z(n, m) if z is None else z) * sigma


def deviation(reference: torch.Tensor, kind: str = "std") -> torch.Tensor:
    mu, sigma = _mean_std(reference)
    if kind == "std":
        return sigma
    if kind == "unit_vec":
        return mu / mu.norm().clamp_min(1e-12)
    if kind == "sign":
        return torch.sign(mu)
    raise ValueError(f"unknown deviation {kind!r}")


def _largest_gamma(ok, gamma_max: float, tol: float = 1e-5) -> float:
    if ok(gamma_max):
        return gamma_max
    lo, hi = 0.0, gamma_max
    while hi - lo > tol * gamma_max:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


MINSUM_BOUNDS = ("min", "max")


def _min_max_sum(reference: torch.Tensor, kind: str, dev: str, gamma_max: float,
                 minsum_bound: str = "min") -> tuple[torch.Tensor, float]:
    ref = reference.to(torch.float64)
    mu = ref.mean(dim=0)
    d = deviation(ref, dev)
    # ‖μ − γd − b_i‖² = ‖r_i‖² − 2γ⟨r_i, d⟩ + γ²‖d‖², r_i = μ − b_i: no P-sized work per γ
    r = mu[None, :] - ref
    rr = (r * r).sum(dim=1)
    rd = r @ d
    dd = float(d @ d)
    g = ref @ ref.T
    sq = g.diagonal()
    pair = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    if kind == "minmax":
        bound = float(pair.max())

        def ok(gamma: float) -> bool:
            return float((rr - 2 * gamma * rd + gamma * gamma * dd).max()) <= bound

    else:
        # each reference update's score: its summed squared distance to the others
        scores = pair.sum(dim=1)
        if minsum_bound not in MINSUM_BOUNDS:
            raise ValueError(f"unknown min-sum bound {minsum_bound!r}; use one of {MINSUM_BOUNDS}")
        bound = float(scores.min() if minsum_bound == "min" else scores.max())

        def ok(gamma: float) -> bool:
            return float((rr - 2 * gamma * rd + gamma * gamma * dd).sum()) <= bound

    gamma = _largest_gamma(ok, gamma_max)
    return (mu - gamma * d).to(reference.dtype), gamma


def minmax(reference: torch.Tensor, dev: str = "std", gamma_max: float = 10.0) -> tuple[torch.Tensor, float]:
    """Shejwalkar & Houmansadr's min-max update and its γ."""
    return _min_max_sum(reference, "minmax", dev, gamma_max)


def minsum(reference: torch.Tensor, dev: str = "std", gamma_max: float = 10.0,
           bound: str = "min") -> tuple[torch.Tensor, float]:
    """Shejwalkar & Houmansadr's min-sum update and its γ; ``bound`` is ``min`` (official) or ``max``."""
    return _min_max_sum(reference, "minsum", dev, gamma_max, bound)


# -- the plan: the resolved threat model -----------------------------------------------


@dataclass
class AttackPlan:
    kind: str
    malicious: list[int]
    seed: int
    num_classes: int
    start: int  # 0-based first active round
    end: int | None  # 0-based last active round
    scale: float | None = None
    target: int = 0
    source: int | None = None
    poison_fraction: float = 0.5
    trigger: Trigger | None = None
    dba: bool = False
    sees_benign: bool = False
    deviation: str = "std"
    z: float | None = None
    minsum_bound: str = "min"
    _index: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self._index = {c: i for i, c in enumerate(self.malicious)}

    def active(self, round_: int) -> bool:
        return round_ >= self.start and (self.end is None or round_ <= self.end)

    def is_malicious(self, client_id: int) -> bool:
        return client_id in self._index

    def attacking(self, client_id: int, round_: int) -> bool:
        return self.is_malicious(client_id) and self.active(round_)

    def piece(self, client_id: int) -> int | None:
        """The DBA piece this attacker stamps (None: the whole trigger)."""
        return self._index[client_id] % self.trigger.num_pieces if self.dba else None

    @property
    def s(self) -> float:
        return self.scale if self.scale is not None else DEFAULT_SCALE.get(self.kind, 1.0)


def poisoned_view(data, client_id: int, plan: AttackPlan, counter: int):
    """A copy of the federated dataset that holds only this attacker's (poisoned) data.

    The attacker's training examples come first, then its clean validation examples; its
    index views point into them and every other client's are empty. Only the attacker's
    examples are copied.
    """
    tr, va = data.client_train[client_id], data.client_val[client_id]
    n = len(tr)
    x = torch.cat([data.x[tr], data.x[va]])
    y = torch.cat([data.y[tr], data.y[va]])
    if plan.kind == "label_flip":
        y[:n] = flip_labels(y[:n], plan.num_classes, plan.source, plan.target)
    elif plan.kind == "backdoor":
        candidates = torch.nonzero(y[:n] != plan.target).flatten().cpu().numpy()
        k = min(int(round(plan.poison_fraction * n)), len(candidates))
        if k:
            rng = numpy_rng(plan.seed, "poison", client_id, counter)
            chosen = torch.as_tensor(np.sort(rng.choice(candidates, size=k, replace=False)), device="cpu")
            x[chosen] = plan.trigger.stamp(x[chosen], plan.piece(client_id))
            y[chosen] = plan.target
    # index tensors stay on the host, as place_data keeps them
    empty = torch.zeros(0, dtype=torch.long, device="cpu")
    train = [empty] * data.num_clients
    val = [empty] * data.num_clients
    train[client_id] = torch.arange(n, device="cpu")
    val[client_id] = torch.arange(n, n + len(va), device="cpu")
    return dataclasses.replace(data, x=x, y=y, client_train=train, client_val=val, server_idx=empty)


class AttackedClient:
    """The method's client algorithm, with malicious clients acting out the plan."""

    def __init__(self, inner, plan: AttackPlan):
        self.inner = inner
        self.plan = plan
        self.stateful = bool(getattr(inner, "stateful", False))
        attacker = getattr(inner, "attacker_algorithm", None)
        self.attacker = attacker() if callable(attacker) else inner

    def __getattr__(self, name):
        if name.startswith("__") or name in ("inner", "plan", "attacker"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def train(self, job, worker, generator):
        plan = self.plan
        if not plan.attacking(job.client_id, job.round):
            return self.inner.train(job, worker, generator)
        if plan.kind in DATA_POISONING:
            clean = worker.data
            worker.data = poisoned_view(clean, job.client_id, plan, job.counter)
            try:
                out = self.attacker.train(job, worker, generator)
            finally:
                worker.data = clean
        else:
            out = self.attacker.train(job, worker, generator)
        u = out.update
        if u.delta is not None:
            if plan.kind == "sign_flip":
                u.delta = sign_flip(u.delta, plan.s)
            elif plan.kind in ("scaling", "backdoor") and plan.s != 1.0:
                u.delta = scaling(u.delta, plan.s)
            elif plan.kind == "gaussian":
                u.delta = gaussian(u.delta, plan.s, torch_generator(plan.seed, "attack-noise", job.client_id, job.counter))
        return out


class CollusionHook:
    """Cohort hook: the round's attackers replace their updates (ALIE, min-max, min-sum;
    or the method's own cohort form of an attack, from its threat ``adapter``)."""

    def __init__(self, plan: AttackPlan, adapter: ThreatAdapter = DELTA_UPLOADS):
        self.plan = plan
        self.adapter = adapter
        self.last_gamma: float | None = None

    def __call__(self, updates: list, state, round_: int, ctx) -> list:
        plan = self.plan
        if not plan.active(round_):
            return updates
        mal = [i for i, u in enumerate(updates) if plan.is_malicious(u.client_id)]
        if not mal:
            return updates
        benign = [i for i, u in enumerate(updates) if not plan.is_malicious(u.client_id)]
        ref = benign if plan.sees_benign and benign else mal
        replaced = self.adapter.collude(plan.kind, updates, ref, mal)
        if replaced is not None:
            return replaced
        reference = torch.stack([updates[i].delta for i in ref])
        if plan.kind == "alie":
            new = alie(reference, len(updates), len(mal), plan.z)
        elif plan.kind == "minmax":
            new, self.last_gamma = minmax(reference, plan.deviation, plan.s)
        else:
            new, self.last_gamma = minsum(reference, plan.deviation, plan.s, plan.minsum_bound)
        return [dataclasses.replace(u, delta=new.clone()) if i in mal else u for i, u in enumerate(updates)]


# -- configuration ---------------------------------------------------------------------


def _data_range(x: torch.Tensor) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def make_plan(config, data, method_name: str) -> AttackPlan:
    """Resolve and validate ``config.attack`` against the data; raise ConfigError with the reason."""
    a = config.attack
    kind = a.kind
    C = data.num_classes
    if kind in DATA_POISONING and config.task.kind != "classification":
        raise ConfigError(f"attack.kind={kind} poisons labels; it needs task.kind=classification.")
    if kind in ("backdoor", "label_flip") and not 0 <= a.target < C:
        raise ConfigError(f"attack.target={a.target} is not a class of {data.name!r} (labels 0..{C - 1}).")
    if a.source is not None:
        if kind != "label_flip":
            raise ConfigError("attack.source applies to label_flip only.")
        if not 0 <= a.source < C:
            raise ConfigError(f"attack.source={a.source} is not a class of {data.name!r} (labels 0..{C - 1}).")
        if a.source == a.target:
            raise ConfigError("attack.source and attack.target are the same label; nothing would be flipped.")
    threats = get_method(method_name).threats
    if a.sees_benign and kind not in COLLUDING and kind not in threats.cohort_attacks:
        own = "".join(f" (and {k}: {what})" for k, what in sorted(threats.cohort_attacks.items()))
        raise ConfigError(f"attack.sees_benign applies to alie, minmax and minsum{own}.")
    if a.scale is not None and kind in ("label_flip", "alie"):
        raise ConfigError(f"attack.scale has no meaning for {kind}; remove it.")
    if a.z is not None and kind != "alie":
        raise ConfigError("attack.z applies to alie only.")
    if a.minsum_bound != "min" and kind != "minsum":
        raise ConfigError(f"attack.minsum_bound={a.minsum_bound} applies to minsum only; remove it or set attack.kind=minsum.")
    refusal = threats.attack_refusal(kind)
    if refusal is not None:
        raise ConfigError(refusal)
    trigger = None
    if kind == "backdoor":
        t = a.trigger
        lo, hi = _data_range(data.x)
        parts = t.parts if t.kind == "dba" else 1
        trigger = make_trigger(tuple(data.input_shape), t.size, t.offset, hi if t.value is None else t.value, lo, parts)
    return AttackPlan(
        kind=kind, malicious=malicious_clients(config.seed, data.num_clients, a.fraction), seed=config.seed,
        num_classes=C, start=a.start_round - 1, end=None if a.end_round is None else a.end_round - 1,
        scale=a.scale, target=a.target, source=a.source, poison_fraction=a.poison_fraction, trigger=trigger,
        dba=a.trigger.kind == "dba", sees_benign=a.sees_benign, deviation=a.deviation, z=a.z,
        minsum_bound=a.minsum_bound,
    )


def configure_attack(exp) -> None:
    """Extension: wrap the client algorithm, add the collusion hook and the attack metrics."""
    cfg = exp.config
    if cfg.attack.kind is None:
        if cfg.attack.fraction > 0:
            raise ConfigError("attack.fraction is set but attack.kind is not; name the attack (e.g. attack.kind=backdoor).")
        return
    plan = make_plan(cfg, exp.data, cfg.method.name)
    threats = get_method(cfg.method.name).threats
    if plan.kind in DATA_POISONING + CLIENT_POISONING:
        exp.algorithm = AttackedClient(exp.algorithm, plan)
    if plan.kind in COLLUDING or plan.kind in threats.cohort_attacks:
        exp.cohort_hooks.append(CollusionHook(plan, threats))
    from .metrics import AttackObserver

    exp.observers.append(AttackObserver(plan, exp))


def describe(plan: AttackPlan) -> dict[str, Any]:
    return {"attack": plan.kind, "malicious_clients": list(plan.malicious)}
