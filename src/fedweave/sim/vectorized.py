"""The vectorized executor: a cohort of same-architecture clients trained at once.

Each trainable tensor of the model is stacked over the cohort's K clients into a
``[K, *shape]`` tensor, and one local step of every client is a single batched
computation, so the per-operation overhead that dominates small models is paid once per
step instead of once per client and step, and the matrix products are large enough to
use every core. Two kernels compute that step:

``func`` (any model the executor accepts)
    ``torch.func.vmap(grad_and_value(loss))`` over the model applied with
    ``functional_call``; the optimizer step is the local step rule
    :class:`fedweave.step.SGDStep` applied to the stacked tensors (:class:`StackedSGD`).
``mlp`` (models that are a stack of ``Linear`` layers and ReLU/Tanh, e.g. ``mlp`` and
``logistic``; chosen automatically for them)
    the forward and backward passes written out with batched matrix products
    (``bmm``), the loss gradient with respect to the output from the task's
    ``weighted_loss_grad`` (closed form for classification, autograd otherwise), and —
    without gradient clipping — the SGD update fused into the
    weight-gradient product (``W.baddbmm_(δᵀ, a, beta=1−η(μ+λ), alpha=−η)``, the
    coefficients of :meth:`fedweave.step.SGDStep.fused`: the gradient is never
    materialised). On W1 (the 2NN) this is what makes vectorized
    training faster than a plain loop; see ``docs/results/scale.md``.
``conv`` (convolutional models: the zoo's ``cnn``, ``lenet5``, GroupNorm ``resnet``;
chosen automatically for them)
    the clients as the groups of grouped convolutions, one autograd graph per step for
    the cohort (:mod:`fedweave.sim.conv_kernel`).
``conv-loop`` (the same models, when asked for)
    each client in turn through the same cohort layers, channels-last: one client's
    activations at a time.

Every client does exactly the steps it would do serially: its minibatches come from the
same generator (``(seed, "batches", client id, job counter)``) in the same order; a short
last batch is padded and masked, so its loss is the mean over its real examples. Clients
are sorted by step count, most first, so at step t the clients still training are a
*prefix* of the cohort and the step runs on views ``[:k_t]`` of the stacked tensors: a
client that has finished costs nothing, and only short last batches are padding.
:attr:`VectorizedExecutor.stats` reports the padding efficiency (useful example-steps ÷
computed example-steps).

Supported: the standard client (plain or FedProx objective, uploading the delta or, as
FedAsync's client does, the full trained vector), SGD with momentum, weight
decay and gradient clipping (the rule :class:`fedweave.step.SGDStep` that
:func:`fedweave.train.local_train` applies too; updates are built by the client
algorithm's :meth:`~fedweave.core.client.ClientAlgorithm.update_from`, as the serial
client's are),
models without float buffers (no BatchNorm) and without dropout or personal segments.
Anything else is refused with the reason. ``executor.kind: auto`` vectorizes only where
the ``mlp`` kernel applies, or the ``conv`` kernel on models without GroupNorm (:func:`auto_reason`;
the ``func`` kernel measured slower than serial) and otherwise falls back to the serial
executor. Results equal the serial executor's within float
tolerance (sums run in another order), not bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..core.client import ClientJob, JobResult
from ..core.device import resolve_device, to_device
from ..core.errors import ConfigError
from ..core.params import FlatModel
from ..core.rng import torch_generator
from ..methods.needs import client_needs
from ..step import FusedSGD, SGDStep
from ..tasks import make_task
from ..train import TrainSettings, epoch_orders, to_compute_device
from .conv_kernel import ConvKernel, ConvLoopKernel, conv_plan, probe
from .executor_base import Executor, SerialExecutor
from .worker import WorkerSetup, place_data

KERNELS = ("auto", "func", "conv", "conv-loop")
COHORT_BYTES = 1 << 30  # default executor.cohort_memory_mb: a cohort's stacked tensors and activations (cohort_size)
GATHER_BYTES = 4 * 2**20  # a cohort's minibatches are gathered from the dataset this much at a time


def unsupported_reason(setup: WorkerSetup, model: FlatModel, settings_optimizer: str) -> str | None:
    """Why this run cannot be vectorized, or None if it can.

    Clients must need nothing beyond plain local SGD and the standard upload (see
    :func:`fedweave.methods.needs.client_needs`); ``upload_full_model`` is fine, as in
    FedAsync's client: it only changes what is sent."""
    if client_needs(setup.algorithm).client_side:
        return f"the method's client algorithm ({type(setup.algorithm).__name__}) customises training"
    spec = model.spec
    if spec.num_buffers or spec.num_personal_buffers or any(s.role == "int_buffer" for s in spec.segments):
        return "the model has buffers (e.g. BatchNorm statistics); use GroupNorm or the serial executor"
    if spec.num_personal:
        return "the model has personal segments"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.module.modules()):
        return "the model uses dropout"
    if setup.precision != "fp32":
        return f"client.precision={setup.precision} (the vectorized kernels train in fp32)"
    if settings_optimizer != "sgd":
        return f"client.optimizer={settings_optimizer} (only sgd is vectorized)"
    if getattr(setup.data, "augment", "none") != "none":
        return f"data.augment={setup.data.augment} (augmentation is applied by the serial and Ray executors' trainer)"
    task = make_task(setup.task_kind)
    try:
        task.per_example_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    except NotImplementedError:
        return f"task {setup.task_kind!r} has no per-example loss"
    except Exception:
        pass
    return None


# -- stacked parameters and the optimizer step ------------------------------------------------
class StackedSGD:
    """The cohort's stacked ``[K, *shape]`` parameters, FedProx's anchors and momentum
    buffers, stepped by the local step rule :class:`fedweave.step.SGDStep` (the rule of
    :func:`fedweave.train.local_train`), clipping each client by the norm of all its
    tensors."""

    def __init__(self, params: list[torch.Tensor], base: list[torch.Tensor], rule: SGDStep):
        self.params, self.base, self.rule = params, base, rule  # base: the anchors, [] without FedProx
        self.bufs = [torch.empty_like(p) for p in params] if rule.momentum else []
        # the same step around a raw gradient, for the bmm kernel (None: clipped, never fused)
        self.fused: FusedSGD | None = rule.fused() if rule.grad_clip is None else None

    def apply(self, k: int, grads: list[torch.Tensor], first: bool, clients: slice | None = None,
              only: list[int] | None = None) -> None:
        """One step of the first ``k`` clients (or of ``clients``, a slice of the cohort);
        ``grads`` (``[k, *shape]``) may be modified. With ``only``, ``grads`` are those of
        the parameters at these indices, and only they step (the others were stepped by
        :meth:`fused_update`)."""
        rows = clients if clients is not None else slice(0, k)
        pick = only if only is not None else range(len(self.params))
        self.rule.apply([self.params[i][rows] for i in pick], grads, [self.bufs[i][rows] for i in pick] if self.bufs else [],
                        first, anchors=[self.base[i][rows] for i in pick] if self.base else [], per_client=True)

    def fused_update(self, rows: slice, weight: int, bias: int, delta, a, first: bool) -> None:
        """One Linear layer's step of the rule with its gradient δᵀa (bias: Σδ) folded in,
        with the coefficients of :meth:`fedweave.step.SGDStep.fused`: w ← βw + α·δᵀa + γw₀,
        or b ← m·b + δᵀa + s·w + γ_b·w₀ and w ← w + α·b with momentum. ``delta`` is
        ``[k, B, out]``, ``a`` the layer's input ``[k, B, in]``; ``weight``/``bias`` index the
        stacked tensors (-1: no bias)."""
        f = self.fused
        for index, is_weight in ((weight, True), (bias, False)):
            if index < 0:
                continue
            w = self.params[index][rows]
            w0 = self.base[index][rows] if self.base else None
            if not f.momentum:
                if is_weight:
                    w.baddbmm_(delta.transpose(1, 2), a, beta=f.beta, alpha=f.alpha)
                else:
                    if f.beta != 1:
                        w.mul_(f.beta)
                    w.add_(delta.sum(1), alpha=f.alpha)
                if w0 is not None:
                    w.add_(w0, alpha=f.anchor)
                continue
            buf = self.bufs[index][rows]
            if is_weight:
                buf.baddbmm_(delta.transpose(1, 2), a, beta=0.0 if first else f.momentum)
            elif first:
                torch.sum(delta, 1, out=buf)
            else:
                buf.mul_(f.momentum).add_(delta.sum(1))
            if f.shrink:
                buf.add_(w, alpha=f.shrink)
            if w0 is not None:
                buf.add_(w0, alpha=f.buffer_anchor)
            w.add_(buf, alpha=f.alpha)


class FuncKernel:
    """Gradients of every active client at once with ``vmap(grad_and_value(loss))``."""

    name = "func"

    def __init__(self, module: nn.Module, task, names: list[str], frozen: dict[str, torch.Tensor]):
        self.names = names

        def loss(params: dict, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            out = functional_call(module, {**params, **frozen}, (x,))
            return (task.per_example_loss(out, y) * weight).sum()

        self.grad_fn = vmap(grad_and_value(loss))

    def step(self, k: int, x, y, weight, opt: StackedSGD, first: bool) -> torch.Tensor:
        with torch.enable_grad():
            grads, losses = self.grad_fn({n: p[:k] for n, p in zip(self.names, opt.params)}, x, y, weight)
        opt.apply(k, [grads[n] for n in self.names], first)
        return losses


@dataclass(frozen=True)
class _Layer:
    kind: str  # "linear", "relu" or "tanh"
    weight: int = -1  # index of the weight among the trainable segments
    bias: int = -1  # index of the bias, -1 if the layer has none


def mlp_layers(model: FlatModel, example_shape: tuple[int, ...]) -> list[_Layer] | None:
    """The model as a list of Linear/ReLU/Tanh layers, or None if it is anything else.

    Accepted: ``nn.Sequential`` (nested ones too) of optional leading ``Flatten`` layers
    (or none, for 1-D examples) followed by ``Linear``, ``ReLU``, ``Tanh`` and ``Identity``
    modules, every parameter trainable."""
    index = {s.name: i for i, s in enumerate(model.spec.group("trainable"))}
    if len(index) != len(list(model.module.parameters())):
        return None  # frozen parameters

    def leaves(module: nn.Module, prefix: str):
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                yield from leaves(child, f"{prefix}{name}.")
        else:
            yield prefix, module

    layers: list[_Layer] = []
    flat_input = len(example_shape) == 1
    for prefix, m in leaves(model.module, ""):
        if isinstance(m, nn.Flatten) and not layers and m.start_dim == 1 and m.end_dim == -1:
            flat_input = True
        elif isinstance(m, nn.Linear):
            layers.append(_Layer("linear", index[prefix + "weight"], index.get(prefix + "bias", -1)))
        elif isinstance(m, nn.ReLU) and layers:
            layers.append(_Layer("relu"))
        elif isinstance(m, nn.Tanh) and layers:
            layers.append(_Layer("tanh"))
        elif not isinstance(m, nn.Identity):
            return None
    if not flat_input or not layers or layers[0].kind != "linear":
        return None
    return layers


class MLPKernel:
    """A stack of Linear/ReLU/Tanh layers, forward and backward written with ``bmm``.

    The gradient of the loss with respect to the model's output comes from the task's
    ``weighted_loss_grad`` (closed form for classification); each Linear layer's
    weight gradient δᵀa goes straight into the update. Without gradient clipping the
    update is fused into that product (see the module docstring); with clipping, every
    layer's gradient is materialised first and :class:`StackedSGD` applies them."""

    name = "mlp"

    def __init__(self, layers: list[_Layer], task):
        self.layers, self.task = layers, task
        self.first_linear = next(i for i, layer in enumerate(layers) if layer.kind == "linear")

    def step(self, k: int, x, y, weight, opt: StackedSGD, first: bool) -> torch.Tensor:
        p = [t[:k] for t in opt.params]
        h = x.reshape(k, x.shape[1], -1)
        saved = []
        for layer in self.layers:
            saved.append(h)
            if layer.kind == "linear":
                h = torch.bmm(h, p[layer.weight].transpose(1, 2))
                if layer.bias >= 0:
                    h.add_(p[layer.bias].unsqueeze(1))
            else:
                h = h.clamp_min(0) if layer.kind == "relu" else h.tanh()
        weighted, delta = self.task.weighted_loss_grad(h.reshape(-1, h.shape[-1]), y.reshape(-1, *y.shape[2:]),
                                                       weight.reshape(-1))
        delta = delta.view(h.shape)
        fused = opt.fused is not None
        grads: list[torch.Tensor | None] = [None] * len(p)
        for i in range(len(self.layers) - 1, -1, -1):
            layer, a = self.layers[i], saved[i]
            if layer.kind == "relu":
                delta = torch.ops.aten.threshold_backward(delta, a, 0)
                continue
            if layer.kind == "tanh":
                out_i = saved[i + 1] if i + 1 < len(saved) else h
                delta = delta * (1 - out_i * out_i)
                continue
            # the input's gradient uses the weights before this step's update
            delta_in = torch.bmm(delta, p[layer.weight]) if i > self.first_linear else None
            if fused:
                opt.fused_update(slice(0, k), layer.weight, layer.bias, delta, a, first)
            else:
                grads[layer.weight] = torch.bmm(delta.transpose(1, 2), a)
                if layer.bias >= 0:
                    grads[layer.bias] = delta.sum(1)
            delta = delta_in
        if not fused:
            opt.apply(k, grads, first)
        return weighted.view(k, -1).sum(1)


# -- the executor -------------------------------------------------------------------------------
@dataclass
class _Plan:
    key: int
    job: ClientJob
    idx: torch.Tensor  # [steps, batch] example indices, a short batch padded with 0
    weight: torch.Tensor  # [steps, batch] 1/(examples in the batch), 0 for padding
    examples: int  # examples processed

    @property
    def steps(self) -> int:
        return len(self.idx)


class VectorizedExecutor(Executor):
    def __init__(self, max_cohort: int = 64, kernel: str = "auto", memory_bytes: int | None = None):
        if kernel not in KERNELS:
            raise ConfigError(f"Unknown vectorized kernel {kernel!r}. Allowed: {', '.join(KERNELS)}.")
        self.max_cohort = max_cohort
        self.memory_bytes = memory_bytes
        self.kernel_choice = kernel
        self.pending: dict[int, ClientJob] = {}
        self.results: dict[int, JobResult] = {}
        self.stats = {"useful": 0, "computed": 0, "cohorts": 0}

    def start(self, setup: WorkerSetup) -> None:
        torch.set_num_threads(setup.threads)
        self.setup = setup
        self.device = resolve_device(setup.device)
        self.model = FlatModel(setup.model_factory().to(self.device), setup.roles)
        self.task = make_task(setup.task_kind)
        self.data = place_data(setup.data, self.device, setup.data_memory_mb)
        trainable = self.model.spec.group("trainable")  # in offset order, as mlp_layers indexes them
        self._shapes = [s.shape for s in trainable]
        self._row_bytes = self.data.x[:1].numel() * self.data.x.element_size()
        example = tuple(self.data.x.shape[1:])
        self._activation_bytes = probe(self.model.module, example, self.data.x.dtype)[1] if self.data.x.is_floating_point() else 0
        choice = self.kernel_choice
        layers = mlp_layers(self.model, example) if choice == "auto" else None
        conv = conv_plan(self.model, example) if choice != "func" and layers is None else None
        if conv is None and choice in ("conv", "conv-loop"):
            raise ConfigError(
                f"executor.vectorized_kernel={choice} needs a convolutional model the conv kernels accept (built from "
                "nn.Sequential and the zoo's blocks, Conv2d/GroupNorm/Linear/ReLU/Tanh/pooling/Flatten layers, every "
                "parameter trainable, [C, H, W] examples); this one is not. Use auto or func.")
        if layers is not None:
            self.kernel = MLPKernel(layers, self.task)
        elif conv is not None:
            self.kernel = (ConvLoopKernel if choice == "conv-loop" else ConvKernel)(*conv, self.task)
        else:
            frozen = {s.name: self.model.module.get_parameter(s.name).detach() for s in self.model.spec.group("frozen")}
            self.kernel = FuncKernel(self.model.module, self.task, [s.name for s in trainable], frozen)

    @property
    def kernel_name(self) -> str:
        return self.kernel.name

    def describe(self) -> str:
        return f"vectorized ({self.kernel_name} kernel)"

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
    def _plan(self, key: int, job: ClientJob) -> _Plan:
        """The client's minibatches exactly as :func:`fedweave.train.local_train` takes them
        (:func:`~fedweave.train.epoch_orders`), padded to full batches."""
        idx = self.data.client_train[job.client_id]
        n, s = len(idx), job.settings
        bs = s.batch_size
        gen = torch_generator(self.setup.seed, "batches", job.client_id, job.counter)
        orders = epoch_orders(idx, s, gen)
        per_epoch = -(-n // bs)
        # the plan is host bookkeeping: it goes to the device with the whole cohort's
        padded = torch.zeros(len(orders), per_epoch * bs, dtype=torch.long, device="cpu")
        weight = torch.full((len(orders), per_epoch, bs), 1.0 / bs, dtype=self.data.x.dtype, device="cpu")
        for e, order in enumerate(orders):
            padded[e, :n] = order
        if n % bs:
            weight[:, -1, :] = 0.0
            weight[:, -1, : n % bs] = 1.0 / (n % bs)
        total = s.num_steps(n)
        return _Plan(key, job, padded.view(-1, bs)[:total], weight.view(-1, bs)[:total], s.examples_processed(n))

    def _run_pending(self) -> None:
        groups: dict[TrainSettings, list[_Plan]] = {}
        for key, job in self.pending.items():
            groups.setdefault(job.settings, []).append(self._plan(key, job))
        self.pending.clear()
        for settings, plans in groups.items():
            # most steps first: the clients still training at any step are a prefix
            plans.sort(key=lambda p: (-p.steps, p.job.client_id))
            size = self.cohort_size(settings)
            for start in range(0, len(plans), size):
                self._train_cohort(plans[start : start + size], settings)

    def cohort_size(self, s: TrainSettings) -> int:
        """``max_cohort``, lowered so that a cohort's stacked tensors (parameters, their
        gradients or the fused update's temporaries, the momentum buffers, FedProx's
        anchor, the final ``[K, P]`` matrix) and its activations (the batch times the
        bytes of every layer's output for one example, :func:`~fedweave.sim.conv_kernel.probe`:
        what autograd keeps for the backward) stay within ``executor.cohort_memory_mb``
        (default ``COHORT_BYTES``, 1 GiB). The activations are what bound a convolutional
        cohort: the GroupNorm ``resnet`` on 3×32×32 at batch 32 keeps ≈ 26 MB of layer outputs
        per client, so 64 clients would need ≈ 1.7 GB."""
        copies = 3 + bool(s.momentum) + bool(self.setup.algorithm.proximal_mu)
        per_client = copies * self.model.spec.num_params * self.model.params.element_size()
        per_client += s.batch_size * self._activation_bytes
        budget = self.memory_bytes if self.memory_bytes is not None else COHORT_BYTES
        return max(1, min(self.max_cohort, budget // max(per_client, 1)))

    def _stack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Contiguous ``[K, *shape]`` tensors, one per trainable segment, from ``[K, P]``."""
        out, off = [], 0
        for shape in self._shapes:
            n = math.prod(shape)
            out.append(torch.empty(len(flat), *shape, dtype=flat.dtype, device=flat.device).copy_(flat[:, off : off + n].view(len(flat), *shape)))
            off += n
        return out

    @torch.no_grad()
    def _train_cohort(self, plans: list[_Plan], s: TrainSettings) -> None:
        k = len(plans)
        x, y = self.data.x, self.data.y
        bases = [p.job.broadcast.params for p in plans]
        # in a synchronous round every client starts from the same tensor: no copies of it
        same = all(b is bases[0] for b in bases)
        base_flat = bases[0].expand(k, -1) if same else torch.stack(bases)
        base_flat = to_device(base_flat, self.device)
        dev = self.device
        rule = SGDStep.of(s, self.setup.algorithm.proximal_mu)
        opt = StackedSGD(self._stack(base_flat), self._stack(base_flat) if rule.mu else [], rule)
        steps = [p.steps for p in plans]
        max_steps, bs = steps[0], s.batch_size
        # [step, client, example]: the cohort's example indices and loss weights
        # built on the host, then moved once: indices where the data is, weights to the device
        all_idx = torch.zeros(max_steps, k, bs, dtype=torch.long, device="cpu")
        all_weight = torch.zeros(max_steps, k, bs, dtype=x.dtype, device="cpu")
        for i, p in enumerate(plans):
            all_idx[: p.steps, i] = p.idx
            all_weight[: p.steps, i] = p.weight
        all_weight = to_device(all_weight, dev)
        training = torch.tensor(steps, device="cpu")[None, :] > torch.arange(max_steps, device="cpu")[:, None]
        active = training.sum(1).tolist()  # clients still training at each step (a prefix), per step
        rows = all_idx[training].reshape(-1)  # the examples of every step's active clients, in step order
        rows = to_device(rows, x.device)
        resident = x.device == dev
        step_losses = torch.zeros(max_steps, k, dtype=x.dtype, device=dev)
        t = start = 0
        while t < max_steps:
            # gather the inputs of several steps at once, up to GATHER_BYTES
            end, stop = start + active[t] * bs, t + 1
            while stop < max_steps and (end + active[stop] * bs) * self._row_bytes <= GATHER_BYTES:
                end, stop = end + active[stop] * bs, stop + 1
            xs, ys = x.index_select(0, rows[start:end]), y.index_select(0, rows[start:end])
            if not resident:  # pinned host data: one non-blocking copy per gathered block
                xs, ys = to_compute_device(xs, dev), to_compute_device(ys, dev)
            offset = 0
            for t in range(t, stop):
                kt = active[t]
                xb = xs[offset : offset + kt * bs].view(kt, bs, *x.shape[1:])
                yb = ys[offset : offset + kt * bs].view(kt, bs, *y.shape[1:])
                step_losses[t, :kt] = self.kernel.step(kt, xb, yb, all_weight[t, :kt], opt, t == 0)
                offset += kt * bs
            t, start = stop, end
        loss_sum = step_losses.to(torch.float64).sum(0).cpu()
        self.stats["useful"] += sum(p.examples for p in plans)
        self.stats["computed"] += bs * sum(active)
        self.stats["cohorts"] += 1
        # the cohort's [K, P] result goes back to host memory, where the server aggregates it
        w = torch.cat([p.reshape(k, -1) for p in opt.params], dim=1).cpu()
        no_buffers = self.model.buffers.cpu()  # empty: models with buffers are not vectorized
        for i, p in enumerate(plans):
            job = p.job
            update = self.setup.algorithm.update_from(
                job, w[i], no_buffers, len(self.data.client_train[job.client_id]), p.steps,
                {"loss": float(loss_sum[i]) / p.steps if p.steps else float("nan")})
            self.results[p.key] = JobResult(update, None, p.examples)

    @property
    def padding_efficiency(self) -> float:
        return self.stats["useful"] / self.stats["computed"] if self.stats["computed"] else 1.0


def auto_reason(kernel) -> str | None:
    """Why ``executor.kind: auto`` trains serially rather than with this kernel, or None
    if the kernel pays (docs/results/scale.md): the bmm kernel always; the grouped conv
    kernel unless the model has GroupNorm (:func:`fedweave.sim.conv_kernel.conv_kernel_pays`);
    the torch.func kernel never."""
    if kernel.name == "mlp" or (kernel.name in ("conv", "conv-loop") and kernel.pays):
        return None
    if kernel.name in ("conv", "conv-loop"):
        return ("the conv kernels apply to this model, but it has GroupNorm layers, and on the GroupNorm resnet both "
                "conv forms measured slower than serial (1.32x and 1.10x); set executor.kind=vectorized to use the "
                "conv kernel anyway")
    return ("only the torch.func kernel applies to this model (it is neither a stack of Linear/ReLU/Tanh "
            "layers nor a convolutional model the conv kernels accept), and it is slower than serial; set "
            "executor.kind=vectorized to use it anyway")


def make_vectorized(setup: WorkerSetup, optimizer: str, max_cohort: int, auto: bool, kernel: str = "auto",
                    memory_bytes: int | None = None):
    """The vectorized executor, or (``auto``) the serial one where vectorizing is impossible
    or would not pay: ``auto`` with the default kernel choice vectorizes only where
    :func:`auto_reason` finds the kernel pays (asking for ``vectorized_kernel: func``
    overrides that)."""
    ex = VectorizedExecutor(max_cohort, kernel, memory_bytes)
    ex.start(setup)
    reason = unsupported_reason(setup, ex.model, optimizer)
    if reason is None and auto and kernel == "auto":
        reason = auto_reason(ex.kernel)
    if reason is None:
        return ex
    if auto:
        serial = SerialExecutor()
        serial.start(setup)
        serial.fallback_reason = reason
        return serial
    ex.check(optimizer)
