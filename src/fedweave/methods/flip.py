"""FLIP — Zhang, Tao, Liu, Xu, Shen, An & Zhang, "FLIP: A Provable Defense Framework for
Backdoor Mitigation in Federated Learning", ICLR 2023 (official code: KaiyuanZh/FLIP,
read for the defaults below).

**Client: trigger inversion and hardening.** A benign client keeps, in the client-state
store, one inverted trigger (mask m, pattern p) per target label it has worked on. In each
job it first inverts the trigger of the next ``method.targets_per_round`` labels
(round-robin over the classes, so every label is covered after a few selections) on the
received global model, warm-starting from its previous trigger for that label
(Neural-Cleanse style, as the official ``Trigger.generate``):

    x' = (1 − m) ⊙ x + m ⊙ p,   m = tanh(a)/2 + ½,  p = lo + (hi − lo)(tanh(b)/2 + ½)
    minimise  CE(f(x'), t) + c · ‖m‖₁         over (a, b), Adam(lr 0.1, betas (0.5, 0.9))

on up to ``method.inversion_examples`` of its examples whose label is not t, for
``method.inversion_steps`` full-batch steps. The cost c starts at ``method.init_cost``
(1e-3) and adapts: after 5 consecutive steps with attack success ≥ 0.9 it is multiplied by
1.5, after 5 below it divided by 1.5^1.5; the trigger kept is the smallest-‖m‖₁ one that
reached 0.9 (the last one when none did — the official code then keeps a zero mask, i.e.
no hardening for that label; we keep the best effort). The mask is shared by the
channels. It then trains as usual, except that in every batch a ``method.portion`` (0.5)
share of the examples get one of its stored triggers (chosen at random; skipped when the
example's label is that trigger's target) *with their true labels* — the hardening that
unlearns trigger-like shortcuts.

The official code additionally schedules symmetric source–target pairs after a warm-up
over all targets; this implementation keeps the universal (all-source) inversion per
target throughout, which is the warm-up phase of the official code.

**Server.** FedAvg (the preset's stages stay overridable).

**Inference: rejection.** A prediction whose largest softmax probability is below
``method.threshold`` τ (0.4) is rejected. fedweave's ``accuracy`` stays the plain argmax
accuracy; FLIP runs also report ``accuracy_with_rejection`` (correct *and* accepted) and
``rejection_rate`` on the clean test set, and the attack success rate counts a rejected
backdoored input as a failed attack.

Attackers (``attack.*``) do not run the hardening: :meth:`FLIPClient.attacker_algorithm`
is the plain trainer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.client import ClientAlgorithm
from ..core.observer import Observer
from ..core.rng import torch_generator
from .registry import MethodInfo, MethodParams, Preset, register
from .threat_adapter import ThreatAdapter

_EPS = 1e-7


class FLIPParams(MethodParams):
    threshold: float = Field(0.4, ge=0, le=1, description="τ: reject predictions whose max softmax probability is below it")
    portion: float = Field(0.5, ge=0, le=1, description="share of each batch stamped with an inverted trigger (true labels)")
    inversion_steps: int = Field(30, ge=1, description="optimisation steps per inverted trigger per job")
    inversion_examples: int = Field(64, ge=1, description="examples used for one inversion")
    inversion_lr: float = Field(0.1, gt=0)
    init_cost: float = Field(1e-3, ge=0, description="initial weight c of the mask's L1 norm")
    asr_threshold: float = Field(0.9, gt=0, le=1, description="attack success an inverted trigger must reach")
    targets_per_round: int = Field(1, ge=1, description="labels whose trigger is inverted in each job")


def mask_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The mask is shared by the channels: (1, H, W) for images, (1, L) for (C, L), (L,) for (L,)."""
    return tuple(input_shape) if len(input_shape) < 2 else (1,) + tuple(input_shape[1:])


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """FLIP's (and Neural Cleanse's) trigger application x' = (1 − m) x + m p."""
    return (1 - mask) * x + mask * pattern


def reject(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where the prediction is rejected: max softmax probability < τ."""
    return torch.softmax(logits, dim=1).amax(dim=1) < threshold


def _atanh_unit(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v.clamp(0, 1) - 0.5) * (2 - _EPS))


def invert_trigger(module, x: torch.Tensor, target: int, steps: int = 30, lr: float = 0.1, init_cost: float = 1e-3,
                   asr_threshold: float = 0.9, lo: float = 0.0, hi: float = 1.0, init=None,
                   generator: torch.Generator | None = None, patience: int = 5):
    """A (mask, pattern) that sends ``x`` to ``target`` with a small mask (see module doc).

    Gradients flow to the trigger only; the model's parameter gradients are not touched.
    """
    shape = mask_shape(tuple(x.shape[1:]))
    if init is None:
        m0 = torch.rand(shape, generator=generator)
        p0 = torch.rand(tuple(x.shape[1:]), generator=generator)
    else:
        m0, p0 = init[0], (init[1] - lo) / max(hi - lo, 1e-12)
    a = _atanh_unit(m0).requires_grad_(True)
    b = _atanh_unit(p0).requires_grad_(True)
    # Adam(lr, betas (0.5, 0.9)) written out: two small tensors, no optimizer machinery
    moments = [[torch.zeros_like(a), torch.zeros_like(a)], [torch.zeros_like(b), torch.zeros_like(b)]]
    b1, b2 = 0.5, 0.9
    y = torch.full((len(x),), int(target), dtype=torch.long)
    cost, up, down = init_cost, 0, 0
    best, best_reg = None, math.inf
    was_training = module.training
    module.eval()
    with torch.enable_grad():
        for step in range(steps):
            mask = torch.tanh(a) / (2 - _EPS) + 0.5
            pattern = lo + (hi - lo) * (torch.tanh(b) / (2 - _EPS) + 0.5)
            out = module(stamp(x, mask, pattern))
            reg = mask.sum()
            loss = F.cross_entropy(out, y) + cost * reg
            grads = torch.autograd.grad(loss, [a, b])
            with torch.no_grad():
                for i, (param, g) in enumerate(zip((a, b), grads)):
                    m1, m2 = moments[i]
                    m1.mul_(b1).add_(g, alpha=1 - b1)
                    m2.mul_(b2).addcmul_(g, g, value=1 - b2)
                    step_no = step + 1
                    denom = (m2 / (1 - b2**step_no)).sqrt_().add_(1e-8)
                    param.addcdiv_(m1, denom, value=-lr / (1 - b1**step_no))
            asr = float((out.argmax(dim=1) == y).float().mean())
            if asr >= asr_threshold and reg.item() < best_reg:
                best, best_reg = (mask.detach().clone(), pattern.detach().clone()), reg.item()
            if asr >= asr_threshold:
                up, down = up + 1, 0
            else:
                up, down = 0, down + 1
            if up >= patience:
                up = 0
                cost = init_cost if cost == 0 else cost * 1.5
            elif down >= patience:
                down = 0
                cost /= 1.5**1.5
    module.train(was_training)
    if best is None:
        with torch.no_grad():
            best = (torch.tanh(a) / (2 - _EPS) + 0.5, lo + (hi - lo) * (torch.tanh(b) / (2 - _EPS) + 0.5))
    return best[0].detach(), best[1].detach()


def harden_batch(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor, targets: torch.Tensor,
                 portion: float, generator: torch.Generator) -> torch.Tensor:
    """Stamp a ``portion`` of the batch with stored triggers, keeping the labels (a new tensor)."""
    n = len(x)
    chosen = torch.rand(n, generator=generator) < portion
    which = torch.randint(len(targets), (n,), generator=generator)
    ok = chosen & (y != targets[which])
    if not bool(ok.any()):
        return x
    out = x.clone()
    w = which[ok]
    out[ok] = stamp(x[ok], masks[w], patterns[w])
    return out


class FLIPClient(ClientAlgorithm):
    stateful = True

    def __init__(self, objective: str, mu: float, params: FLIPParams):
        super().__init__(objective, mu)
        self.p = params
        self._active = None

    def attacker_algorithm(self) -> ClientAlgorithm:
        return ClientAlgorithm(self.objective, self.mu)

    def loss_fn(self, job, worker):
        active = self._active
        if active is None:
            return super().loss_fn(job, worker)
        masks, patterns, targets, gen = active
        task = worker.task

        def loss(module, xb, yb):
            return task.loss(module(harden_batch(xb, yb, masks, patterns, targets, self.p.portion, gen)), yb)

        return loss

    def train(self, job, worker, generator):
        data, p = worker.data, self.p
        idx = data.client_train[job.client_id]
        x, y = data.x[idx], data.y[idx]
        lo, hi = float(data.x.min()), float(data.x.max())
        seed = worker.setup.seed
        prev = job.state or {}
        triggers = {}  # label -> (mask, pattern), kept as stacked tensors in the client state
        if "flip_labels" in prev:
            for i, t in enumerate(prev["flip_labels"].tolist()):
                triggers[int(t)] = (prev["flip_masks"][i], prev["flip_patterns"][i])
        nxt = int(prev.get("flip_next", 0))
        gen = torch_generator(seed, "flip-invert", job.client_id, job.counter)
        for _ in range(p.targets_per_round):
            t = nxt % data.num_classes
            nxt += 1
            pool = torch.nonzero(y != t).flatten()
            if len(pool) == 0:
                continue
            pick = pool[torch.randperm(len(pool), generator=gen)[: p.inversion_examples]]
            triggers[t] = invert_trigger(worker.model.module, x[pick], t, p.inversion_steps, p.inversion_lr, p.init_cost,
                                         p.asr_threshold, lo, hi, triggers.get(t), gen)
        labels = sorted(triggers)
        if labels and p.portion > 0:
            self._active = (
                torch.stack([triggers[t][0] for t in labels]), torch.stack([triggers[t][1] for t in labels]),
                torch.tensor(labels, dtype=torch.long), torch_generator(seed, "flip-stamp", job.client_id, job.counter),
            )
        try:
            out = super().train(job, worker, generator)
        finally:
            self._active = None
        state = {**(job.state or {}), "flip_next": nxt}
        if labels:
            state.update(flip_labels=torch.tensor(labels, dtype=torch.long),
                         flip_masks=torch.stack([triggers[t][0] for t in labels]),
                         flip_patterns=torch.stack([triggers[t][1] for t in labels]))
        out.state = state
        return out


class FlipObserver(Observer):
    """Clean accuracy with FLIP's rejection rule."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, threshold: float, batch_size: int):
        self.x, self.y, self.threshold, self.batch_size = x, y, threshold, batch_size

    @torch.no_grad()
    def evaluate(self, module, state) -> dict:
        was_training = module.training
        module.eval()
        correct = rejected = 0
        for s in range(0, len(self.y), self.batch_size):
            logits = module(self.x[s : s + self.batch_size])
            rej = reject(logits, self.threshold)
            rejected += int(rej.sum())
            correct += int(((logits.argmax(dim=1) == self.y[s : s + self.batch_size]) & ~rej).sum())
        module.train(was_training)
        n = max(len(self.y), 1)
        return {"accuracy_with_rejection": correct / n, "rejection_rate": rejected / n}


def _threshold(config) -> float:
    extras = {k: v for k, v in config.method.extras().items() if k in FLIPParams.model_fields}
    return FLIPParams.model_validate(extras).threshold


def setup_flip(exp) -> None:
    """Set-up: FLIP runs report accuracy under the rejection rule."""
    exp.observers.append(FlipObserver(exp.data.x_test, exp.data.y_test, _threshold(exp.config), exp.config.eval.batch_size))


class FLIPThreats(ThreatAdapter):
    """The attack figures count a rejected prediction as no attack success."""

    def rejection_threshold(self, config) -> float | None:
        return float(_threshold(config))


def _client(config, params: FLIPParams) -> FLIPClient:
    return FLIPClient(config.client.objective, config.client.mu, params)


METHOD = register(
    MethodInfo(
        name="flip",
        summary="client trigger inversion + hardening (per-client trigger state); confidence-threshold rejection",
        citation="Zhang et al., ICLR 2023",
        preset=Preset(weighting="size", combiner="mean", server_opt="replace", client=_client),
        params=FLIPParams,
        setup=setup_flip,
        threats=FLIPThreats(),
    )
)
