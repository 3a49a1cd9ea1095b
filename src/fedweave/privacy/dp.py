"""Client-level differential privacy: DP-FedAvg (McMahan, Ramage, Talwar & Zhang,
"Learning Differentially Private Recurrent Language Models", ICLR 2018).

``privacy.dp.clip`` = C, ``privacy.dp.noise_multiplier`` = σ, ``privacy.dp.delta`` = δ, with
Poisson client sampling at rate q (``schedule.sampling: poisson``,
``schedule.sampling_rate: q``) over N clients. Each round t:

1. every client is in the cohort S_t independently with probability q;
2. each client clips its update to norm C, Δ̃_k = Δ_k · min(1, C/‖Δ_k‖) (on the client, so
   the uplink carries the clipped update; the server clips again, which changes nothing
   for an honest client and bounds a dishonest one);
3. the server forms the fixed-denominator estimate with uniform weights
   ``d = Σ_{k∈S_t} Δ̃_k / (qN) + N(0, (σC/(qN))² I)`` — the denominator is the *expected*
   cohort size qN, not |S_t|, so one client changes the sum by at most C whatever the
   cohort; the noise is drawn from a generator derived from ``(seed, "dp-noise", round)``
   and is added even when the cohort is empty;
4. the method's server optimizer applies d (post-processing: any optimizer keeps the
   guarantee).

ε at δ is reported in every evaluation record and in the summary (``epsilon``) by Opacus's
RDP accountant, one step per round with sample rate q and noise multiplier σ
(:mod:`fedweave.privacy.accountant`).

Combinations the accounting does not cover are refused at config time, with the reason:
asynchronous or buffered modes, sampling other than Poisson (or over-selection, which keeps
the first arrivals), robust combiners or weightings other than the plain mean, full
strategies whose aggregation is not a clipped sum (SCAFFOLD, FRL, FLTrust...), and models
with shared float buffers (BatchNorm statistics would leave the clients un-noised).
"""

from __future__ import annotations

import torch

from ..aggregate import clip_by_norm
from ..core.errors import ConfigError
from ..core.observer import Observer
from ..core.rng import torch_generator
from ..core.strategy import Strategy, stack_deltas
from .accountant import check_accountant, dp_epsilon


def dp_noise_std(clip: float, noise_multiplier: float, sample_rate: float, num_clients: int) -> float:
    """Standard deviation σC/(qN) of the noise on the averaged update."""
    return noise_multiplier * clip / (sample_rate * num_clients)


class DPStrategy(Strategy):
    """DP-FedAvg around a staged strategy: clipped sum / qN + Gaussian noise, then the
    staged strategy's server optimizer."""

    def __init__(self, inner, clip: float, noise_multiplier: float, sample_rate: float, seed: int):
        self.inner = inner
        self.name = getattr(inner, "name", "strategy")
        self.modes = ("sync",)
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.seed = seed

    def __getattr__(self, name):
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def init(self, params, buffers, ctx):
        return self.inner.init(params, buffers, ctx)

    def configure(self, client_ids, state, ctx):
        return self.inner.configure(client_ids, state, ctx)

    def broadcast_payload(self, state, ctx):
        return self.inner.broadcast_payload(state, ctx)

    def metrics(self, state) -> dict:
        return self.inner.metrics(state)

    def noise_std(self, num_clients: int) -> float:
        return dp_noise_std(self.clip, self.noise_multiplier, self.sample_rate, num_clients)

    def aggregate(self, updates, state, ctx):
        n = ctx.num_clients
        denom = self.sample_rate * n
        if updates:
            total = clip_by_norm(stack_deltas(updates), self.clip).sum(dim=0)
        else:
            total = torch.zeros_like(state.params)
        gen = torch_generator(self.seed, "dp-noise", state.round)
        noise = torch.randn(state.params.shape, generator=gen, dtype=state.params.dtype) * self.noise_std(n)
        combined = total / denom + noise
        state.params, state.extra["opt"] = self.inner.server_opt.step(state.params, combined, state.extra["opt"])
        state.version += 1
        return state


class DPClient:
    """The method's client algorithm, with the upload clipped to norm C."""

    def __init__(self, inner, clip: float):
        self.inner = inner
        self.clip = clip
        self.stateful = bool(getattr(inner, "stateful", False))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("inner", "clip"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def attacker_algorithm(self):
        """Attackers do not follow the protocol: they skip the client-side clipping (the
        server clips again)."""
        attacker = getattr(self.inner, "attacker_algorithm", None)
        return attacker() if callable(attacker) else self.inner

    def train(self, job, worker, generator):
        out = self.inner.train(job, worker, generator)
        if out.update.delta is not None:
            out.update.delta = clip_by_norm(out.update.delta[None, :], self.clip)[0]
        return out


class DPObserver(Observer):
    """Reports ε (at δ) after the rounds completed so far."""

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float, clip: float):
        self.sigma, self.q, self.delta, self.clip = noise_multiplier, sample_rate, delta, clip
        self.rounds = 0

    def on_round_end(self, state, round_: int) -> None:
        self.rounds = round_ + 1

    def epsilon(self) -> float:
        return dp_epsilon(self.sigma, self.q, self.rounds, self.delta)

    def evaluate(self, module, state) -> dict:
        return {"epsilon": self.epsilon()}

    def summary(self) -> dict:
        return {"epsilon": self.epsilon(), "dp_delta": self.delta, "dp_noise_multiplier": self.sigma,
                "dp_clip": self.clip, "dp_sample_rate": self.q}

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = int(state.get("rounds", 0))


def configure_privacy(exp) -> None:
    """Extension: ``privacy.dp`` wraps the strategy and the client, or explains why not."""
    cfg = exp.config
    dp = cfg.privacy.dp
    if dp.clip is None:
        return
    from ..methods.stages import StagedStrategy

    sched = cfg.schedule
    why = "the RDP accounting of DP-FedAvg covers one Poisson-sampled cohort per synchronous round"
    if sched.mode != "sync":
        raise ConfigError(f"privacy.dp with schedule.mode={sched.mode} is refused: {why}.")
    if sched.sampling != "poisson":
        raise ConfigError(
            f"privacy.dp needs schedule.sampling=poisson (with schedule.sampling_rate q), not {sched.sampling!r}: {why}."
        )
    if getattr(sched, "over_select", 0):
        raise ConfigError(f"privacy.dp with schedule.over_select is refused: keeping the first arrivals is not Poisson sampling; {why}.")
    strategy = exp.strategy
    if not isinstance(strategy, StagedStrategy):
        raise ConfigError(
            f"privacy.dp is refused for method {cfg.method.name!r}: its aggregation is not a clipped sum, "
            "so one client's influence is not bounded by C as the accountant assumes."
        )
    if strategy.combiner_name != "mean":
        raise ConfigError(
            f"privacy.dp with combiner {strategy.combiner_name!r} is refused: the accountant assumes the clipped updates are "
            "summed (sensitivity C); a robust combiner's sensitivity is not C."
        )
    if strategy.weighting_name not in ("size", "uniform"):
        raise ConfigError(
            f"privacy.dp with weighting {strategy.weighting_name!r} is refused: DP-FedAvg uses uniform weights with the "
            "fixed denominator qN (data-dependent weights would change the sensitivity)."
        )
    if exp.spec.num_buffers:
        raise ConfigError(
            "privacy.dp is refused for models with shared float buffers (BatchNorm statistics): they would be averaged "
            "without noise. Use model.norm=group or none, or make the buffers personal."
        )
    check_accountant()
    exp.strategy = DPStrategy(strategy, dp.clip, dp.noise_multiplier, sched.sampling_rate, cfg.seed)
    exp.algorithm = DPClient(exp.algorithm, dp.clip)
    exp.observers.append(DPObserver(dp.noise_multiplier, sched.sampling_rate, dp.delta, dp.clip))
