"""FLIP — Zhang, Tao, Liu, Xu, Shen, An & Zhang, "FLIP: A Provable Defense Framework for
Backdoor Mitigation in Federated Learning", ICLR 2023 (official code: KaiyuanZh/FLIP,
read for the defaults below).

**Client: trigger inversion and hardening.** A benign client keeps, in the client-state
store, one inverted trigger (mask m, pattern p) per target label. On its **first job**
it inverts the trigger of *every* label with ``method.first_inversion_steps`` (400) steps
each — the official code's warm-up, which inverts all targets at 400 steps the first
time a client is selected. On later jobs it re-inverts the next
``method.targets_per_round`` labels (round-robin) with ``method.inversion_steps`` (200,
the official budget after the warm-up), warm-starting from its stored trigger for that
label (Neural-Cleanse style, as the official ``Trigger.generate``):

    x' = (1 − m) ⊙ x + m ⊙ p,   m = tanh(a)/2 + ½,  p = lo + (hi − lo)(tanh(b)/2 + ½)
    minimise  CE(f(x'), t) + c · ‖m‖₁         over (a, b), Adam(lr 0.1, betas (0.5, 0.9))

on up to ``method.inversion_examples`` of its examples whose label is not t, full-batch.
The cost c starts at ``method.init_cost`` (1e-3) and adapts: after ``method.patience``
(10, official) consecutive steps with attack success ≥ 0.9 it is multiplied by 1.5, after
as many below it divided by 1.5^1.5. Whenever a step reaches 0.9 with a smaller ‖m‖₁
than the best so far, that trigger becomes the best and the optimisation restarts from
it plus uniform noise of ±0.01 (as the official code). The trigger kept is the best one;
when no step reached 0.9 the official code keeps a **zero mask**, which stamps nothing
(``method.inversion_fallback: zero``, default; ``best_effort`` keeps the last iterate, our
former behaviour). A stored zero mask is not used as a warm start (a fresh random one is).
The mask is shared by the channels. The client then trains as usual, except that in
every batch a ``method.portion`` (0.5) share of the examples get one of its stored
triggers (chosen at random; skipped when the example's label is that trigger's target)
*with their true labels* — the hardening that unlearns trigger-like shortcuts.

Differences from the official code: it inverts on one example per present class
(``size_min`` = 1) and interleaves the warm-up inversions with the first minibatches (one
target per batch); here the inversions run before training on up to
``inversion_examples`` (64) examples, and the trigger used for a batch is drawn from all
stored ones. After the warm-up the official code schedules symmetric source–target pairs;
this implementation keeps the universal (all-source) inversion per target throughout.
A cheaper budget (e.g. ``first_inversion_steps: 30``, ``inversion_steps: 30``,
``patience: 5``, fedweave's former defaults) is a **deviation**: short inversions return
masks covering a quarter of the image, so the hardening becomes noise augmentation.

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
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.client import ClientAlgorithm
from .rejection import RejectionObserver, reject  # noqa: F401  (reject: FLIP's rule, also importable from here)
from ..core.rng import torch_generator, uniform
from .registry import MethodInfo, MethodParams, Preset, register
from .threat_adapter import ThreatAdapter

_EPS = 1e-7


class FLIPParams(MethodParams):
    threshold: float = Field(0.4, ge=0, le=1, description="τ: reject predictions whose max softmax probability is below it")
    portion: float = Field(0.5, ge=0, le=1, description="share of each batch stamped with an inverted trigger (true labels)")
    first_inversion_steps: int = Field(
        400, ge=1, description="a client's first job: every label's trigger is inverted with this many steps (official warm-up)"
    )
    inversion_steps: int = Field(200, ge=1, description="later jobs: steps per re-inverted trigger (official: 200)")
    inversion_examples: int = Field(64, ge=1, description="examples used for one inversion")
    inversion_lr: float = Field(0.1, gt=0)
    init_cost: float = Field(1e-3, ge=0, description="initial weight c of the mask's L1 norm")
    asr_threshold: float = Field(0.9, gt=0, le=1, description="attack success an inverted trigger must reach")
    targets_per_round: int = Field(1, ge=1, description="later jobs: labels whose trigger is re-inverted in each job")
    patience: int = Field(10, ge=1, description="steps above/below the success threshold before the cost c changes (official: 10)")
    inversion_fallback: Literal["zero", "best_effort"] = Field(
        "zero", description="an inversion that never reaches asr_threshold: zero mask, stamps nothing (official) or keep the last iterate"
    )


def mask_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The mask is shared by the channels: (1, H, W) for images, (1, L) for (C, L), (L,) for (L,)."""
    return tuple(input_shape) if len(input_shape) < 2 else (1,) + tuple(input_shape[1:])


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """FLIP's (and Neural Cleanse's) trigger application x' = (1 − m) x + m p."""
    return (1 - mask) * x + mask * pattern


def _atanh_unit(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v.clamp(0, 1) - 0.5) * (2 - _EPS))


def invert_trigger(module, x: torch.Tensor, target: int, steps: int = 400, lr: float = 0.1, init_cost: float = 1e-3,
                   asr_threshold: float = 0.9, lo: float = 0.0, hi: float = 1.0, init=None,
                   generator: torch.Generator | None = None, patience: int = 10, fallback: str = "zero"):
    """A (mask, pattern) that sends ``x`` to ``target`` with a small mask (see module doc).

    When no step reaches ``asr_threshold``: a zero mask and pattern (``fallback="zero"``,
    the official behaviour: stamping it changes nothing) or the last iterate
    (``"best_effort"``). Gradients flow to the trigger only; the model's parameter
    gradients are not touched.
    """
    shape = mask_shape(tuple(x.shape[1:]))
    dev = x.device
    if init is None:
        m0 = uniform(shape, generator, dev)
        p0 = uniform(tuple(x.shape[1:]), generator, dev)
    else:
        m0, p0 = init[0].to(dev), (init[1].to(dev) - lo) / max(hi - lo, 1e-12)
    a = _atanh_unit(m0).requires_grad_(True)
    b = _atanh_unit(p0).requires_grad_(True)
    # Adam(lr, betas (0.5, 0.9)) written out: two small tensors, no optimizer machinery
    moments = [[torch.zeros_like(a), torch.zeros_like(a)], [torch.zeros_like(b), torch.zeros_like(b)]]
    b1, b2 = 0.5, 0.9
    y = torch.full((len(x),), int(target), dtype=torch.long, device=dev)
    cost, up, down = init_cost, 0, 0
    best, best_reg = None, math.inf
    was_training = module.training
    module.eval()
    with torch.enable_grad():
        for step in range(steps):
            mask = torch.tanh(a) / (2 - _EPS) + 0.5
            unit_pattern = torch.tanh(b) / (2 - _EPS) + 0.5
            pattern = lo + (hi - lo) * unit_pattern
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
                # restart from the new best, slightly perturbed (as the official code)
                with torch.no_grad():
                    a.copy_(_atanh_unit(mask.detach() + (uniform(mask.shape, generator, dev) - 0.5) * 0.02))
                    b.copy_(_atanh_unit(unit_pattern.detach() + (uniform(b.shape, generator, dev) - 0.5) * 0.02))
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
        if fallback == "zero":
            return torch.zeros(shape, device=dev), torch.zeros(tuple(x.shape[1:]), device=dev)
        with torch.no_grad():
            best = (torch.tanh(a) / (2 - _EPS) + 0.5, lo + (hi - lo) * (torch.tanh(b) / (2 - _EPS) + 0.5))
    return best[0].detach(), best[1].detach()


def harden_batch(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor, targets: torch.Tensor,
                 portion: float, generator: torch.Generator) -> torch.Tensor:
    """Stamp a ``portion`` of the batch with stored triggers, keeping the labels (a new tensor)."""
    n = len(x)
    chosen = uniform(n, generator, x.device) < portion
    which = torch.randint(len(targets), (n,), generator=generator, device=generator.device).to(x.device)
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
        first_job = "flip_next" not in prev
        if first_job:  # the official warm-up: every label, with the larger budget
            targets, steps = list(range(data.num_classes)), p.first_inversion_steps
            nxt = data.num_classes
        else:
            targets = [(nxt + i) % data.num_classes for i in range(p.targets_per_round)]
            steps, nxt = p.inversion_steps, nxt + p.targets_per_round
        for t in targets:
            pool = torch.nonzero(y != t).flatten()
            if len(pool) == 0:
                continue
            pick = pool[torch.randperm(len(pool), generator=gen, device=gen.device)[: p.inversion_examples].to(pool.device)]
            warm = triggers.get(t)
            if warm is not None and not bool(warm[0].any()):
                warm = None  # a failed (zero) trigger is no warm start
            triggers[t] = invert_trigger(worker.model.module, x[pick], t, steps, p.inversion_lr, p.init_cost,
                                         p.asr_threshold, lo, hi, warm, gen, p.patience, p.inversion_fallback)
        labels = sorted(triggers)
        if labels and p.portion > 0:
            self._active = (
                torch.stack([triggers[t][0] for t in labels]), torch.stack([triggers[t][1] for t in labels]),
                torch.tensor(labels, dtype=torch.long, device=x.device),
                torch_generator(seed, "flip-stamp", job.client_id, job.counter),
            )
        try:
            out = super().train(job, worker, generator)
        finally:
            self._active = None
        state = {**(job.state or {}), "flip_next": nxt}
        if labels:
            state.update(flip_labels=torch.tensor(labels, dtype=torch.long, device=x.device),
                         flip_masks=torch.stack([triggers[t][0] for t in labels]),
                         flip_patterns=torch.stack([triggers[t][1] for t in labels]))
        out.state = state
        return out


FlipObserver = RejectionObserver  # the name earlier versions used


def _threshold(config) -> float:
    extras = {k: v for k, v in config.method.extras().items() if k in FLIPParams.model_fields}
    return FLIPParams.model_validate(extras).threshold


def setup_flip(exp) -> None:
    """Set-up: FLIP runs report accuracy under the rejection rule."""
    exp.observers.append(RejectionObserver(exp.data.x_test, exp.data.y_test, _threshold(exp.config), exp.config.eval.batch_size))


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
