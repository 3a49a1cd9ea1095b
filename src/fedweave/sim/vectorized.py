"""The vectorized executor: a cohort of same-architecture clients trained at once.

Clients' trainable vectors are stacked into a ``[K, P]`` matrix and one local step of
all K clients is a single ``torch.func.vmap(grad(loss))`` call over the model applied
with ``functional_call`` — the per-operation overhead that dominates small models is
paid once per step instead of once per client and step.

Every client does exactly the steps it would do serially: its minibatches come from
the same generator (``(seed, "batches", client id, job counter)``) in the same order;
a short last batch is padded and masked, so its loss is the mean over its real
examples; a client that has finished its steps is masked out of later updates. Clients
are bucketed by step count (sorted, with at most ``max_padding`` extra steps per bucket)
so that little work is wasted on padding; :attr:`VectorizedExecutor.stats` reports the
padding efficiency (useful example-steps ÷ computed example-steps).

Supported: the standard client (plain or FedProx objective), SGD with momentum, weight
decay and gradient clipping, models without float buffers (no BatchNorm) and without
dropout or personal segments. Anything else is refused with the reason; ``executor.kind:
auto`` then falls back to the serial executor. Results equal the serial executor's within
float tolerance (sums run in another order), not bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..errors import ConfigError
from ..messages import Update
from ..methods.base import ClientAlgorithm, ClientJob, JobResult
from ..params import FlatModel
from ..rng import torch_generator
from ..tasks import make_task
from .executors import Executor, SerialExecutor
from .worker import WorkerSetup


def unsupported_reason(setup: WorkerSetup, model: FlatModel, settings_optimizer: str) -> str | None:
    """Why this run cannot be vectorized, or None if it can."""
    if type(setup.algorithm) is not ClientAlgorithm:
        return f"the method's client algorithm ({type(setup.algorithm).__name__}) customises training"
    spec = model.spec
    if spec.num_buffers or spec.num_personal_buffers or any(s.role == "int_buffer" for s in spec.segments):
        return "the model has buffers (e.g. BatchNorm statistics); use GroupNorm or the serial executor"
    if spec.num_personal:
        return "the model has personal segments"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.module.modules()):
        return "the model uses dropout"
    if settings_optimizer != "sgd":
        return f"client.optimizer={settings_optimizer} (only sgd is vectorized)"
    task = make_task(setup.task_kind)
    try:
        task.per_example_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    except NotImplementedError:
        return f"task {setup.task_kind!r} has no per-example loss"
    except Exception:
        pass
    return None


@dataclass
class _Plan:
    job: ClientJob
    batches: list[torch.Tensor]  # index tensors, one per step


class VectorizedExecutor(Executor):
    def __init__(self, max_cohort: int = 64, max_padding: float = 0.5):
        self.max_cohort = max_cohort
        self.max_padding = max_padding
        self.pending: dict[int, ClientJob] = {}
        self.results: dict[int, JobResult] = {}
        self.stats = {"useful": 0, "computed": 0, "cohorts": 0}

    def start(self, setup: WorkerSetup) -> None:
        torch.set_num_threads(setup.threads)
        self.setup = setup
        self.model = FlatModel(setup.model_factory(), setup.roles)
        self.task = make_task(setup.task_kind)
        self.data = setup.data
        spec = self.model.spec
        self._segments = [(s.name, s.offset, s.numel, s.shape) for s in spec.group("trainable")]
        self._frozen = {s.name: self.model.module.get_parameter(s.name).detach() for s in spec.group("frozen")}

    def check(self, optimizer: str) -> None:
        reason = unsupported_reason(self.setup, self.model, optimizer)
        if reason:
            raise ConfigError(f"executor.kind=vectorized cannot run this experiment: {reason}. Use executor.kind=serial or auto.")

    def submit(self, job: ClientJob) -> int:
        key = id(job)
        self.pending[key] = job
        return key

    def collect(self, handle: int) -> JobResult:
        if handle not in self.results:
            self._run_pending()
        return self.results.pop(handle)

    def cancel(self, handle: int) -> None:
        self.pending.pop(handle, None)
        self.results.pop(handle, None)

    # -- training ---------------------------------------------------------------------------
    def _plan(self, job: ClientJob) -> _Plan:
        idx = self.data.client_train[job.client_id]
        n, s = len(idx), job.settings
        total = s.num_steps(n)
        gen = torch_generator(self.setup.seed, "batches", job.client_id, job.counter)
        batches: list[torch.Tensor] = []
        while len(batches) < total:
            order = idx[torch.randperm(n, generator=gen)]
            for start in range(0, n, s.batch_size):
                batches.append(order[start : start + s.batch_size])
                if len(batches) >= total:
                    break
        return _Plan(job, batches)

    def _run_pending(self) -> None:
        jobs = list(self.pending.items())
        self.pending.clear()
        groups: dict[tuple, list] = {}
        for key, job in jobs:
            groups.setdefault((job.settings, self.setup.algorithm.objective), []).append((key, self._plan(job)))
        for (settings, _), plans in groups.items():
            plans.sort(key=lambda kp: (len(kp[1].batches), kp[1].job.client_id))
            bucket: list = []
            for kp in plans:
                steps = len(kp[1].batches)
                if bucket and (len(bucket) >= self.max_cohort or steps > (1 + self.max_padding) * max(1, len(bucket[0][1].batches))):
                    self._train_cohort(bucket, settings)
                    bucket = []
                bucket.append(kp)
            if bucket:
                self._train_cohort(bucket, settings)

    def _loss_fn(self):
        module, task, frozen = self.model.module, self.task, self._frozen

        def loss(params: dict, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            per_example = task.per_example_loss(functional_call(module, {**params, **frozen}, (x,)), y)
            return (per_example * mask).sum() / mask.sum().clamp(min=1.0)

        return loss

    def _split(self, w: torch.Tensor) -> dict:
        """Per-layer views ``[K, *shape]`` of the stacked ``[K, P]`` vectors. Differentiating
        with respect to these (rather than slices of one flat vector, whose backward builds
        a full-size zero tensor per slice) halves the cost of a step."""
        k = w.shape[0]
        return {name: w[:, off : off + n].view(k, *shape) for name, off, n, shape in self._segments}

    @torch.no_grad()
    def _train_cohort(self, bucket: list, s) -> None:
        plans = [p for _, p in bucket]
        k = len(plans)
        x, y = self.data.x, self.data.y
        base = torch.stack([p.job.broadcast.params for p in plans])
        w = base.clone()
        buf = torch.zeros_like(w) if s.momentum else None
        mu = self.setup.algorithm.mu if self.setup.algorithm.objective == "prox" else 0.0
        steps = torch.tensor([len(p.batches) for p in plans])
        max_steps = int(steps.max())
        bs = s.batch_size
        loss_sum = torch.zeros(k, dtype=torch.float64)
        grad_fn = vmap(grad_and_value(self._loss_fn()))
        # every step's (padded) example indices and masks, built once for the cohort
        all_idx = torch.zeros(max_steps, k, bs, dtype=torch.long)
        all_mask = torch.zeros(max_steps, k, bs, dtype=x.dtype)
        for i, p in enumerate(plans):
            for t, b in enumerate(p.batches):
                all_idx[t, i, : len(b)] = b
                all_mask[t, i, : len(b)] = 1
        self.stats["useful"] += int(all_mask.sum())
        self.stats["computed"] += max_steps * k * bs
        for t in range(max_steps):
            active = steps > t
            idx, mask = all_idx[t], all_mask[t]
            xb, yb = x[idx], y[idx]
            with torch.enable_grad():
                grads, losses = grad_fn(self._split(w), xb, yb, mask)
            g = torch.cat([grads[name].reshape(k, -1) for name, _, _, _ in self._segments], dim=1)
            if mu:
                g = g + mu * (w - base)
            if s.grad_clip is not None:
                norms = g.norm(dim=1, keepdim=True)
                g = torch.where(norms > s.grad_clip, g * (s.grad_clip / (norms + 1e-12)), g)
            if s.weight_decay:
                g = g + s.weight_decay * w
            everyone = bool(active.all())  # the common case needs no masking
            if buf is not None:
                new_buf = g if t == 0 else buf * s.momentum + g
                buf = new_buf if everyone else torch.where(active[:, None], new_buf, buf)
                g = buf
            w = w - s.lr * g if everyone else torch.where(active[:, None], w - s.lr * g, w)
            loss_sum += torch.where(active, losses.to(torch.float64), 0.0)
        self.stats["cohorts"] += 1
        for i, (key, p) in enumerate(bucket):
            job = p.job
            n = len(self.data.client_train[job.client_id])
            update = Update(
                client_id=job.client_id, base_version=job.broadcast.version, delta=w[i] - base[i],
                buffers=torch.zeros(0, dtype=w.dtype), num_examples=n, num_steps=len(p.batches),
                metrics={"loss": float(loss_sum[i]) / max(len(p.batches), 1)},
            )
            self.results[key] = JobResult(update, None, sum(len(b) for b in p.batches))

    @property
    def padding_efficiency(self) -> float:
        return self.stats["useful"] / self.stats["computed"] if self.stats["computed"] else 1.0


def make_vectorized(setup: WorkerSetup, optimizer: str, max_cohort: int, auto: bool):
    """The vectorized executor, or (auto) the serial one where vectorizing is impossible."""
    ex = VectorizedExecutor(max_cohort)
    ex.start(setup)
    reason = unsupported_reason(setup, ex.model, optimizer)
    if reason is None:
        return ex
    if auto:
        serial = SerialExecutor()
        serial.start(setup)
        serial.fallback_reason = reason
        return serial
    ex.check(optimizer)
