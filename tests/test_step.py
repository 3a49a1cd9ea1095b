"""The local step rule (fedweave.step.SGDStep) is the one rule every training path applies.

Two full-batch SGD steps of a tiny softmax-regression model are computed by hand with
NumPy (gradient (softmax(z) − onehot(y))ᵀx / n, then FedProx's μ(w − w₀), clipping,
weight decay, momentum, as in torch.optim.SGD and FedProx's eq. (2)) and compared with
the serial trainer (local_train with the client algorithm's FedProx hook) and with both
vectorized kernels, whose bmm kernel folds the step into its weight-gradient product.
"""

import numpy as np
import pytest
import torch

from fedweave.messages import Broadcast
from fedweave.methods.base import ClientAlgorithm, ClientJob
from fedweave.params import FlatModel
from fedweave.sim.vectorized import FuncKernel, MLPKernel, StackedSGD, mlp_layers
from fedweave.step import SGDStep
from fedweave.tasks import make_task
from fedweave.train import TrainSettings, local_train

D, C, N = 3, 2, 4  # features, classes, examples per client (one full batch per step)
# (momentum, weight decay, FedProx μ, clipping bound): the bmm kernel fuses the first two
# and materialises the gradient for the third; 0.05 is below every gradient norm here
RULES = [(0.9, 0.01, 0.1, None), (0.0, 0.01, 0.1, None), (0.9, 0.01, 0.1, 0.05)]
LR = 0.5


def _data(seed):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(C, D)), rng.normal(size=C)
    return w0, rng.normal(size=(N, D)), np.array([0, 1, 1, 0])


def _by_hand(w0, x, y, momentum, weight_decay, mu, clip, steps=2):
    """Each step: g = ∇ mean cross-entropy; g += μ(w − w₀); g *= min(1, c/‖g‖); g += λw;
    b = g (first step) or m·b + g; w −= η·b."""
    (w, b), (a_w, a_b) = (w0[0].copy(), w0[1].copy()), w0
    buf, clipped = None, []
    for _ in range(steps):
        z = x @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(N), y] -= 1
        g = np.concatenate([(p.T @ x / N).ravel(), p.mean(0)])
        g += mu * (np.concatenate([w.ravel(), b]) - np.concatenate([a_w.ravel(), a_b]))
        if clip is not None:
            norm = np.linalg.norm(g)
            clipped.append(norm > clip)
            g *= min(1.0, clip / norm)
        g += weight_decay * np.concatenate([w.ravel(), b])
        buf = g if buf is None or not momentum else momentum * buf + g
        w = w - LR * buf[: C * D].reshape(C, D)
        b = b - LR * buf[C * D:]
    if clip is not None:
        assert all(clipped)  # the case really clips
    return np.concatenate([w.ravel(), b])


def _model(w0):
    module = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w0[0]))
        module.bias.copy_(torch.from_numpy(w0[1]))
    return FlatModel(module)


@pytest.mark.parametrize("momentum, weight_decay, mu, clip", RULES)
def test_local_train_takes_the_hand_computed_steps(momentum, weight_decay, mu, clip):
    w0, x, y = _data(0)
    model = _model(w0)
    settings = TrainSettings(epochs=2, batch_size=N, lr=LR, momentum=momentum, weight_decay=weight_decay, grad_clip=clip)
    algorithm = ClientAlgorithm("prox", mu)
    job = ClientJob(0, 0, 0, Broadcast(0, model.params.clone(), model.buffers.clone()), None, settings)
    result = local_train(model, make_task("classification"), torch.from_numpy(x), torch.from_numpy(y), torch.arange(N),
                         settings, torch.Generator().manual_seed(0), algorithm.grad_hooks(job, None))
    assert result.steps == 2
    np.testing.assert_allclose(model.params.numpy(), _by_hand(w0, x, y, momentum, weight_decay, mu, clip),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", ["mlp", "func"])
@pytest.mark.parametrize("momentum, weight_decay, mu, clip", RULES)
def test_vectorized_kernels_take_the_hand_computed_steps(momentum, weight_decay, mu, clip, kernel):
    """Two clients at once, each from its own start and on its own data."""
    clients = [_data(seed) for seed in (1, 2)]
    models = [_model(w0) for w0, _, _ in clients]
    task = make_task("classification")
    stacks = [torch.stack([m.module.weight.detach().clone() for m in models]),
              torch.stack([m.module.bias.detach().clone() for m in models])]
    rule = SGDStep.of(TrainSettings(lr=LR, momentum=momentum, weight_decay=weight_decay, grad_clip=clip), mu)
    opt = StackedSGD([s.clone() for s in stacks], [s.clone() for s in stacks], rule)
    if kernel == "mlp":
        step = MLPKernel(mlp_layers(models[0], (D,)), task)
    else:
        step = FuncKernel(models[0].module, task, ["weight", "bias"], {})
    xs = torch.stack([torch.from_numpy(x) for _, x, _ in clients])
    ys = torch.stack([torch.from_numpy(y) for _, _, y in clients])
    weight = torch.full((2, N), 1.0 / N, dtype=torch.float64)
    with torch.no_grad():
        for t in range(2):
            step.step(2, xs, ys, weight, opt, t == 0)
    for i, (w0, x, y) in enumerate(clients):
        got = torch.cat([opt.params[0][i].reshape(-1), opt.params[1][i]]).numpy()
        np.testing.assert_allclose(got, _by_hand(w0, x, y, momentum, weight_decay, mu, clip), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_coefficients_are_the_rules(momentum):
    lr, weight_decay, mu = 0.1, 0.01, 0.5
    rule = SGDStep(lr, momentum, weight_decay, mu)
    f = rule.fused()
    # w ← w − η(g + μ(w − w₀) + λw) = (1 − η(μ + λ))w − ηg + ημw₀
    assert (f.beta, f.alpha, f.anchor) == pytest.approx((1 - lr * (mu + weight_decay), -lr, lr * mu), abs=1e-15)
    assert (f.momentum, f.shrink, f.buffer_anchor) == pytest.approx((momentum, mu + weight_decay, -mu), abs=1e-15)
    # and the fused form takes the rule's steps (two of them, so the momentum buffer is used)
    gen = torch.Generator().manual_seed(0)
    w, w0 = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(2)]
    stepped, fused_w = w.clone(), w.clone()
    bufs, fused_buf = [torch.empty(5, dtype=torch.float64)], None
    for t, g in enumerate(grads):
        rule.apply([stepped], [g.clone()], bufs, t == 0, anchors=[w0])
        if momentum:
            fused_buf = g.clone() if t == 0 else f.momentum * fused_buf + g
            fused_buf = fused_buf + f.shrink * fused_w + f.buffer_anchor * w0
            fused_w = fused_w + f.alpha * fused_buf
        else:
            fused_w = f.beta * fused_w + f.alpha * g + f.anchor * w0
    torch.testing.assert_close(fused_w, stepped, rtol=1e-13, atol=1e-13)


def test_a_clipped_step_is_never_fused():
    with pytest.raises(ValueError, match="clipped"):
        SGDStep(0.1, grad_clip=1.0).fused()


def test_per_client_clipping_uses_each_clients_own_norm():
    # client 0: ‖g‖ = 5 over both tensors (3, 4) → scaled by 1/5; client 1: ‖g‖ = 0.5 → unchanged
    rule = SGDStep(lr=1.0, grad_clip=1.0)
    params = [torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)]
    grads = [torch.tensor([[3.0], [0.3]], dtype=torch.float64), torch.tensor([[4.0], [0.4]], dtype=torch.float64)]
    rule.apply(params, grads, [], True, per_client=True)
    torch.testing.assert_close(params[0], torch.tensor([[-0.6], [-0.3]], dtype=torch.float64))
    torch.testing.assert_close(params[1], torch.tensor([[-0.8], [-0.4]], dtype=torch.float64))
