"""The vectorized executor's kernels for convolutional models.

Two forms of one step of a cohort of K clients, both through the model rebuilt with
cohort layers (:func:`conv_plan`) that read the clients' stacked ``[K, *shape]``
parameters:

``conv`` (:class:`ConvKernel`, clients as groups)
    all K clients in one forward and one backward pass — what pays where each client's
    step is small (few convolution MACs per example), because the per-operation overhead
    is paid once for the cohort;
``conv-loop`` (:class:`ConvLoopKernel`, clients one after another)
    each client's step through the same cohort layers with K = 1, channels-last, and the
    optimizer step applied to the client's slice of the stacked tensors: a cohort's
    activations are one client's, not K clients'. On W2 (the ``cnn`` on 3×32×32) it is
    0.81–0.82× serial, the grouped form 0.73–0.75×; on 1-channel images, where
    channels-last changes nothing, it is slower than serial (docs/results/scale.md).

Both forms compute the model rewritten exactly (:func:`activation_after_pooling`): a
ReLU directly before a max-pooling is applied after it, on a quarter of the elements
(max commutes with ReLU, and the gradient reaches the same input element — zero
wherever the window's maximum is ≤ 0, either way). The serial executor runs the user's
module as given.

In the grouped form, a cohort of K clients runs as one network whose every layer holds
the K clients side by side, so that one step of all K is one forward and one backward pass
of ordinary PyTorch operations:

* feature maps are ``[B, K·C, H, W]``: client j's C channels are channels j·C … j·C+C−1;
* ``Conv2d`` (C→O channels, g groups) becomes a convolution with K·g groups whose weight
  is the clients' ``[K, O, C/g, kh, kw]`` stack reshaped to ``[K·O, C/g, kh, kw]``, so
  client j's output channels see only client j's input channels;
* ``GroupNorm(G, C)`` becomes ``GroupNorm(K·G, K·C)`` (groups are runs of consecutive
  channels, so each stays within one client) with the stacked affine parameters;
* ReLU/Tanh, max and average pooling, the residual additions of the zoo's ``BasicBlock``
  act channel by channel or element by element, so they need no change;
* a flatten gives ``[B, K·F]`` (client-major); the first ``Linear`` views it as
  ``[K, B, F]`` and every ``Linear`` is a batched product with the stacked ``[K, O, F]``
  weights (``baddbmm``).

The loss is the sum over clients of each client's own mean minibatch loss (the weights
``1/n`` of its real examples, 0 on padding), so autograd's gradient of the sum with
respect to client j's stacked slice is client j's gradient alone. The step is
:class:`fedweave.step.SGDStep` applied per client (:class:`~fedweave.sim.vectorized.StackedSGD`;
momentum, weight decay, FedProx and per-client clipping), as for the ``func`` kernel —
except that, without clipping, each Linear layer (after the first convolution) applies
it to its own weights in its backward with the gradient folded into the product
(:class:`_FusedLinear`, the coefficients of the bmm kernel's fused update), so the
largest gradient of a CNN, ``[K, 512, 4096]`` for W2's first Linear layer, is never
materialised.

Accepted models (:func:`conv_plan`): built from ``nn.Sequential``, the zoo's
``BasicBlock`` and ``ResNet8`` (whose ``forward`` only adds, applies ReLU and flattens) and
the leaf layers above (``Conv2d`` with zero padding, ``GroupNorm``, ``Linear``, ``ReLU``,
``Tanh``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``, ``Identity``),
every parameter trainable, with at least one convolution, on ``[C, H, W]`` examples.
BatchNorm is refused earlier (its running statistics are float buffers,
:func:`~fedweave.sim.vectorized.unsupported_reason`). Other containers are refused
because their ``forward`` could reshape in a way the stacked layout does not survive.

``executor.kind: auto`` uses the grouped form where :func:`conv_kernel_pays` (measured in
docs/results/scale.md), and trains serially otherwise; the loop form is used when asked
for (``executor.vectorized_kernel: conv-loop``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import module_device
from ..core.params import FlatModel
from ..models.zoo import BasicBlock, ResNet8

_CONTAINERS = (nn.Sequential, BasicBlock, ResNet8)
_PASS_THROUGH = (nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


class _Cohort:
    """What the cohort layers read at each step: the active clients' stacked tensors and,
    when the step is fused, how a Linear layer steps its own weights in its backward
    (``update(weight, bias, δ, a)``, :meth:`~fedweave.sim.vectorized.StackedSGD.fused_update`)."""

    params: list[torch.Tensor] = []
    k: int = 0
    update = None
    linear: list[int] = []  # the stacked tensors of Linear layers that can step themselves


class _FusedLinear(torch.autograd.Function):
    """A cohort Linear layer ``x·Wᵀ + b`` over ``[k, B, in]`` whose backward returns the
    input's gradient (with the weights before this step) and then applies this step to
    its own stacked weights with the gradient folded into the product — the
    ``[k, out, in]`` weight gradient is never materialised, as in the bmm kernel. Only
    when the step can be fused (no gradient clipping, whose factor needs every gradient
    first)."""

    @staticmethod
    def forward(ctx, x, w, b, layer):
        ctx.save_for_backward(x)
        ctx.w, ctx.layer = w, layer  # w is stepped in place in backward, after its last use
        out = torch.bmm(x, w.transpose(1, 2))
        return out.add_(b.unsqueeze(1)) if b is not None else out

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        grad_x = torch.bmm(delta, ctx.w)
        ctx.layer.cohort.update(ctx.layer.weight, ctx.layer.bias, delta, x)
        return grad_x, None, None, None


class _CohortConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, weight: int, bias: int, cohort: _Cohort):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight, self.bias, self.cohort = weight, bias, cohort

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.cohort.params, self.cohort.k
        w = p[self.weight].reshape(-1, *p[self.weight].shape[2:])
        b = p[self.bias].reshape(-1) if self.bias >= 0 else None
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups * k)


class _CohortGroupNorm(nn.Module):
    def __init__(self, norm: nn.GroupNorm, weight: int, bias: int, cohort: _Cohort):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias, self.cohort = weight, bias, cohort

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.cohort.params, self.cohort.k
        w = p[self.weight].reshape(-1) if self.weight >= 0 else None
        b = p[self.bias].reshape(-1) if self.bias >= 0 else None
        return F.group_norm(x, self.groups * k, w, b, self.eps)


class _CohortLinear(nn.Module):
    def __init__(self, weight: int, bias: int, cohort: _Cohort):
        super().__init__()
        self.weight, self.bias, self.cohort = weight, bias, cohort

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.cohort.params, self.cohort.k
        if self.cohort.update is not None:
            x = x.view(x.shape[0], k, -1).transpose(0, 1) if x.dim() == 2 else x
            return _FusedLinear.apply(x, p[self.weight], p[self.bias] if self.bias >= 0 else None, self)
        if k == 1:  # the loop form: one client's plain product (faster than a batch of one)
            w = p[self.weight].view(p[self.weight].shape[1:])
            b = p[self.bias].view(-1) if self.bias >= 0 else None
            return F.linear(x.reshape(-1, w.shape[1]), w, b).unsqueeze(0)
        if x.dim() == 2:  # [B, K·F] from a flatten of the channel-stacked maps
            x = x.view(x.shape[0], k, -1).transpose(0, 1)
        # computed transposed, W·xᵀ: autograd then hands back the weight's gradient
        # contiguous (x·Wᵀ gives it as a transposed view, and the optimizer's in-place
        # update of the stacked weights reads it with strides across the whole tensor)
        xt = x.transpose(1, 2)
        if self.bias >= 0:
            return torch.baddbmm(p[self.bias].unsqueeze(2), p[self.weight], xt).transpose(1, 2)
        return torch.bmm(p[self.weight], xt).transpose(1, 2)


def conv_plan(model: FlatModel, example_shape: tuple[int, ...]) -> tuple[nn.Module, _Cohort, bool] | None:
    """The model rebuilt with cohort layers, the object they read the stacked parameters
    from and whether ``auto`` should use the grouped form for it (:func:`conv_kernel_pays`),
    or None if the model is not one the conv kernel accepts."""
    if len(example_shape) != 3:
        return None
    index = {s.name: i for i, s in enumerate(model.spec.group("trainable"))}
    if len(index) != len(list(model.module.parameters())):
        return None  # frozen parameters are not stacked
    cohort = _Cohort()
    net = copy.deepcopy(model.module)
    convs = 0
    for name, m in list(net.named_modules()):
        if isinstance(m, _CONTAINERS) or isinstance(m, _PASS_THROUGH):
            continue
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                return None
            continue
        prefix = name + "."
        w, b = index.get(prefix + "weight", -1), index.get(prefix + "bias", -1)
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            convs += 1
            new: nn.Module = _CohortConv(m, w, b, cohort)
        elif isinstance(m, nn.GroupNorm):
            new = _CohortGroupNorm(m, w, b, cohort)
        elif isinstance(m, nn.Linear):
            new = _CohortLinear(w, b, cohort)
        else:
            return None
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr, new)
    if not convs:
        return None
    activation_after_pooling(net)
    # a Linear layer steps itself in its backward only if autograd reaches it, i.e. if a
    # convolution (whose parameters are differentiated) comes before it
    first = next(m for m in net.modules() if isinstance(m, (_CohortConv, _CohortGroupNorm, _CohortLinear)))
    if isinstance(first, _CohortConv):
        cohort.linear = sorted(i for m in net.modules() if isinstance(m, _CohortLinear)
                               for i in (m.weight, m.bias) if i >= 0)
    return net, cohort, conv_kernel_pays(model.module)


def activation_after_pooling(net: nn.Module) -> int:
    """Rewrites, in place, every ``nn.Sequential`` of ``net`` where a ReLU comes directly
    before a ``MaxPool2d`` so that the pooling comes first; returns how many pairs it
    swapped. Bit-exact, forward and backward: max over a window commutes with ReLU, both
    orders send the gradient to the window's largest input (zero where that input is
    ≤ 0, in both orders), and ReLU's backward only keeps or zeroes, so overlapping
    windows' sums are the same too. The activation then runs on a quarter of the elements
    (2×2 pooling). Not Tanh: it rounds distinct large inputs to one float, so the
    argmax of a tie could move, and its backward multiplies — overlapping windows' sums
    would round differently."""
    swapped = 0
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        i = 0
        while i + 1 < len(names):
            act, pool = seq._modules[names[i]], seq._modules[names[i + 1]]
            if type(act) is nn.ReLU and type(pool) is nn.MaxPool2d and not pool.return_indices:
                seq._modules[names[i]], seq._modules[names[i + 1]] = pool, act
                swapped += 1
                i += 2
            else:
                i += 1
    return swapped


def conv_macs(module: nn.Module, example_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the model's convolutions for one example (forward), found
    by a dry forward pass: Σ output elements × (input channels per group × kernel area)."""
    return probe(module, example_shape)[0]


def probe(module: nn.Module, example_shape: tuple[int, ...], dtype: torch.dtype | None = None) -> tuple[int, int]:
    """One dry forward pass of one example, on the module's own device: the MACs of its
    convolutions (:func:`conv_macs`) and the bytes of every leaf module's output — what
    autograd keeps for the backward, about, and what a cohort of K clients at batch B
    holds K·B times over (:meth:`~fedweave.sim.vectorized.VectorizedExecutor.cohort_size`).
    The example is zeros of ``dtype`` (the data's; default the parameters' dtype), made
    where the module's parameters live, and the module runs in eval mode for the probe."""
    macs = activation = 0

    def count(layer, inputs, output):
        nonlocal macs, activation
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for out in outputs:
            if isinstance(out, torch.Tensor):
                activation += out.numel() * out.element_size()
        if isinstance(layer, nn.Conv2d):
            macs += outputs[0][0].numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    first = next(module.parameters(), None)
    device = module_device(module)
    if dtype is None:
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.get_default_dtype()
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, *example_shape, device=device, dtype=dtype))
    finally:
        module.train(training)
        for h in hooks:
            h.remove()
    return macs, activation


def _bind(cohort: _Cohort, opt, rows: slice, first: bool) -> tuple[list[torch.Tensor], list[int] | None]:
    """Hand the cohort layers the stacked tensors of ``rows``: autograd leaves for what
    the step differentiates, plain views for the Linear layers that step themselves
    (when the step can be fused). Returns the leaves and their indices (None: all)."""
    fused = opt.fused is not None and cohort.linear
    if not fused:
        leaves = [t[rows].detach().requires_grad_() for t in opt.params]
        cohort.params, cohort.update = leaves, None
        return leaves, None
    own = set(cohort.linear)
    views = [t[rows] if i in own else t[rows].detach().requires_grad_() for i, t in enumerate(opt.params)]
    cohort.params = views
    cohort.update = lambda weight, bias, delta, a: opt.fused_update(rows, weight, bias, delta, a, first)
    only = [i for i in range(len(views)) if i not in own]
    return [views[i] for i in only], only


class ConvKernel:
    """One step of every active client through the cohort network (see the module
    docstring), gradients by autograd over the one graph, the step by ``SGDStep`` —
    fused into the Linear layers' backward where it can be (:class:`_FusedLinear`)."""

    name = "conv"

    channels_last = True

    def __init__(self, net: nn.Module, cohort: _Cohort, pays: bool, task):
        self.net, self.cohort, self.pays, self.task = net, cohort, pays, task

    def step(self, k: int, x, y, weight, opt, first: bool) -> torch.Tensor:
        # x: [k, B, C, H, W] -> [B, k·C, H, W]
        bs = x.shape[1]
        xb = x.transpose(0, 1).reshape(bs, -1, *x.shape[3:])
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.enable_grad():
            leaves, only = _bind(self.cohort, opt, slice(0, k), first)
            self.cohort.k = k
            out = self.net(xb)  # [k, B, outputs], or [B, k·F] if no Linear follows the flatten
            if out.dim() == 2:
                out = out.view(bs, k, -1).transpose(0, 1)
            per_example = self.task.per_example_loss(out.reshape(k * bs, *out.shape[2:]), y.reshape(k * bs, *y.shape[2:]))
            weighted = per_example * weight.reshape(-1)
            grads = list(torch.autograd.grad(weighted.sum(), leaves))
        self.cohort.params, self.cohort.update = [], None
        opt.apply(k, grads, first, only=only)
        return weighted.detach().view(k, bs).sum(1)


class ConvLoopKernel:
    """One step of each active client in turn through the cohort network with K = 1 (see
    the module docstring): a channels-last minibatch, the client's slices of the stacked
    parameters as the leaves of its own autograd graph, and the step applied to those
    slices (fused into the Linear layers' backward where it can be)."""

    name = "conv-loop"

    def __init__(self, net: nn.Module, cohort: _Cohort, pays: bool, task):
        self.net, self.cohort, self.pays, self.task = net, cohort, pays, task

    def step(self, k: int, x, y, weight, opt, first: bool) -> torch.Tensor:
        losses = torch.empty(k, dtype=weight.dtype, device=weight.device)
        for j in range(k):
            xj = x[j].contiguous(memory_format=torch.channels_last)
            rows = slice(j, j + 1)
            with torch.enable_grad():
                leaves, only = _bind(self.cohort, opt, rows, first)
                self.cohort.k = 1
                out = self.net(xj)  # [1, B, outputs], or [B, F] if no Linear follows the flatten
                out = out.reshape(x.shape[1], *out.shape[2:]) if out.dim() == 3 else out
                weighted = self.task.per_example_loss(out, y[j]) * weight[j]
                grads = list(torch.autograd.grad(weighted.sum(), leaves))
            self.cohort.params, self.cohort.update = [], None
            opt.apply(1, grads, first, clients=rows, only=only)
            losses[j] = weighted.detach().sum()
        return losses


def conv_kernel_pays(module: nn.Module) -> bool:
    """Whether ``executor.kind: auto`` should train a convolutional model the conv kernel
    accepts with the grouped form rather than serially: unless it has a ``GroupNorm``.

    Measured (docs/results/scale.md, 2 December 2026; CPU time per round, 10 clients of
    batch 32, 1 thread, with freed memory retained): the grouped form took 0.66–0.88× the
    serial executor's time on every ``cnn`` and ``lenet5`` workload — digits 1×8×8 (0.87 M
    convolution MACs per example), mnist5k and CIFAR-shaped 3×32×32, up to W2's ``cnn``
    (15.6 M; 0.75× over a whole W2 run) — but 1.32× on the GroupNorm ``resnet`` (3×32×32, 12.5 M), where the
    loop form is 1.10×: grouped normalisation of channels-last maps is slow on the CPU,
    and that model has no max-pooling for the exact rewrite to help. The former rule (at
    most 1 M MACs) was measured before the rewrite, the contiguous Linear gradients and
    the retained memory, when the grouped form was 1.73× serial on W2."""
    return not any(isinstance(m, nn.GroupNorm) for m in module.modules())
