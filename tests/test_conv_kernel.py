"""The vectorized executor's conv kernels (clients as groups of grouped convolutions, and
clients one after another through the rewritten channels-last graph): per-client updates
equal the serial executor's, ragged cohorts, the exact rewrite, refusals, and auto's rule."""

import numpy as np
import pytest
import torch

from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment, start_executor
from helpers_runs import run_capturing


def _images(path, side):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 240)
    x = rng.normal(size=(240, 2, side, side)).astype(np.float32) + y[:, None, None, None] * 0.3
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Tiny continuous images (2×8×8, Gaussian). Continuous, because the 8×8 digits have
    runs of equal zero pixels: exactly tied max-pool windows whose argmax flips with the
    order of float sums, after which a client's update differs by far more than rounding.
    Tiny, because a pre-activation within rounding of 0 flips a ReLU the same way, and
    the chance of one grows with the number of units × steps."""
    return _images(tmp_path_factory.mktemp("conv") / "images.npz", 8)


@pytest.fixture(scope="module")
def larger_images(tmp_path_factory):
    """2×12×12: the cnn's convolutions then do 2.07 M MACs per example, beyond the rule's bound."""
    return _images(tmp_path_factory.mktemp("conv") / "larger.npz", 12)


def base(images):
    return ["data.dataset=npz", f"data.root={images}", "data.partition.num_clients=6",
            "schedule.clients_per_round=4", "schedule.rounds=2", "eval.every=2", "client.epochs=1",
            "client.batch_size=8", "client.lr=0.05"]


MODELS = {
    "cnn": ["model.name=cnn"],
    "lenet5": ["model.name=lenet5"],
    "resnet": ["model.name=resnet", "model.width=4", "model.norm=group"],
}
OPTIMIZERS = {
    "sgd": [],
    "momentum-wd-clip": ["client.momentum=0.9", "client.weight_decay=0.001", "client.grad_clip=1.0"],
    "fedprox-momentum-wd": ["method.name=fedprox", "client.mu=0.5", "client.momentum=0.5", "client.weight_decay=0.01"],
}


KERNELS = ("conv", "conv-loop")


@pytest.fixture
def strict_device(device):
    """The test device (``FEDWEAVE_TEST_DEVICE``; ``bench/gpu.sh`` runs these tests on CUDA)
    with cuDNN's TF32 convolutions off, so that serial and the conv forms — which call
    different convolutions — are compared at float32's precision there too."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield f"executor.device={device}"
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("model", list(MODELS))
def test_conv_kernel_updates_match_serial(tmp_path, images, model, opt, kernel, strict_device):
    extra = base(images) + MODELS[model] + OPTIMIZERS[opt] + [strict_device]
    serial, _, _ = run_capturing(tmp_path, "s", extra)
    vec, _, exp = run_capturing(tmp_path, "v", extra + ["executor.kind=vectorized", f"executor.vectorized_kernel={kernel}"])
    assert exp.executor.kernel_name == kernel
    assert len(serial) == len(vec) == 2
    for a, b in zip(serial, vec):
        assert a.keys() == b.keys() and len(a) == 4
        for cid in a:
            assert a[cid][1] == b[cid][1]
            assert torch.allclose(a[cid][0], b[cid][0], atol=1e-5, rtol=1e-4), (cid, (a[cid][0] - b[cid][0]).abs().max())
            assert a[cid][2] == pytest.approx(b[cid][2], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_conv_kernel_ragged_cohort_matches_serial(tmp_path, images, kernel, strict_device):
    """Dirichlet client sizes and 2 epochs: clients of a cohort stop at different steps
    (the active prefix shrinks), and a cohort that is split in two by max_cohort."""
    extra = base(images) + ["model.name=lenet5", "data.partition.kind=dirichlet", "data.partition.alpha=0.3",
                            "client.epochs=2", "client.batch_size=5", strict_device]
    serial, _, _ = run_capturing(tmp_path, "s", extra)
    vec, _, exp = run_capturing(tmp_path, "v", extra + ["executor.kind=vectorized", "executor.max_cohort=3",
                                                         f"executor.vectorized_kernel={kernel}"])
    steps = {cid: s for r in serial for cid, (_, s, _) in r.items()}
    assert len(set(steps.values())) >= 3  # genuinely ragged
    assert exp.executor.padding_efficiency < 1  # short last batches padded, finished clients dropped
    for a, b in zip(serial, vec):
        for cid in a:
            assert a[cid][1] == b[cid][1]
            assert torch.allclose(a[cid][0], b[cid][0], atol=1e-5, rtol=1e-4)


def test_conv_kernel_refuses_batchnorm_with_reason(tmp_path, images):
    import fedweave

    with pytest.raises(ConfigError, match="buffers.*BatchNorm"):
        fedweave.run(None, out=tmp_path / "bn", overrides=base(images) + [
            "model.name=resnet", "model.width=4", "model.norm=batch", "executor.kind=vectorized"])
    assert not (tmp_path / "bn").exists()


def test_conv_plan_accepts_only_known_layers():
    from torch import nn

    from fedweave.core.params import FlatModel
    from fedweave.models.zoo import build_cnn
    from fedweave.sim.conv_kernel import conv_plan

    def flat(module):
        return FlatModel(module, {})

    assert conv_plan(flat(build_cnn((1, 8, 8), 10)), (1, 8, 8)) is not None
    assert conv_plan(flat(build_cnn((1, 8, 8), 10)), (64,)) is None  # not image examples

    class Custom(nn.Module):  # a forward the stacked layout might not survive
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x).mean(1)

    assert conv_plan(flat(Custom()), (1, 8, 8)) is None
    assert conv_plan(flat(nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="circular"), nn.Flatten())), (1, 8, 8)) is None
    assert conv_plan(flat(nn.Sequential(nn.Flatten(), nn.Linear(64, 3))), (1, 8, 8)) is None  # no convolution


def test_conv_macs_and_the_rule():
    """MACs per example by hand (output elements × input channels × kernel area), and the
    measured rule: the grouped form pays unless the model has GroupNorm."""
    from fedweave.models.zoo import build_cnn, build_lenet5, build_resnet
    from fedweave.sim.conv_kernel import conv_kernel_pays, conv_macs

    # cnn on 1×8×8: conv1 32·8·8 outputs × 1·25, conv2 (after a 2×2 pool) 64·4·4 × 32·25
    assert conv_macs(build_cnn((1, 8, 8), 10), (1, 8, 8)) == 32 * 64 * 25 + 64 * 16 * 32 * 25 == 870_400
    # lenet5 on 1×28×28: conv1 (padded) 6·28·28 × 25, conv2 (valid, on 14×14) 16·10·10 × 6·25
    assert conv_macs(build_lenet5((1, 28, 28), 10), (1, 28, 28)) == 6 * 784 * 25 + 16 * 100 * 150
    assert conv_kernel_pays(build_cnn((3, 32, 32), 10)) and conv_kernel_pays(build_lenet5((1, 28, 28), 10))
    assert not conv_kernel_pays(build_resnet((3, 32, 32), 10, 4, "group"))


def _auto_executor(overrides):
    exp = build_experiment(load_config(None, overrides + ["executor.kind=auto"]))
    start_executor(exp)
    return exp.executor


def test_auto_uses_conv_kernel_where_the_rule_says(larger_images):
    from fedweave.sim.executors import SerialExecutor
    from fedweave.sim.vectorized import VectorizedExecutor

    # cnn on the 8×8 digits and on 2×12×12 (0.87 M and 2.07 M MACs per example): the grouped form
    digits = _auto_executor(["data.partition.num_clients=6", "schedule.clients_per_round=3", "model.name=cnn"])
    assert isinstance(digits, VectorizedExecutor) and digits.kernel_name == "conv"
    larger = _auto_executor(base(larger_images) + MODELS["cnn"])
    assert isinstance(larger, VectorizedExecutor) and larger.kernel_name == "conv"
    # the GroupNorm resnet: serial, saying why
    resnet = _auto_executor(base(larger_images) + MODELS["resnet"])
    assert isinstance(resnet, SerialExecutor) and "GroupNorm" in resnet.fallback_reason
    # either form can be forced
    for kernel in KERNELS:
        forced = _auto_executor(base(larger_images) + MODELS["cnn"] + [f"executor.vectorized_kernel={kernel}"])
        assert forced.kernel_name == kernel
    # a model that is not convolutional: auto still picks the bmm kernel, a conv form is refused
    assert _auto_executor(["data.partition.num_clients=6", "schedule.clients_per_round=3", "model.name=mlp"]).kernel_name == "mlp"
    assert not isinstance(_auto_executor(["data.partition.num_clients=6", "schedule.clients_per_round=3", "model.name=mlp"]), SerialExecutor)
    with pytest.raises(ConfigError, match="vectorized_kernel=conv-loop needs a convolutional model"):
        _auto_executor(["data.partition.num_clients=6", "schedule.clients_per_round=3", "model.name=mlp", "executor.vectorized_kernel=conv-loop"])


def test_probe_counts_every_leaf_output_on_the_modules_device():
    """Activation bytes per example by hand: the outputs of the leaf layers of
    Conv2d(1→2, 3×3, same) → ReLU → MaxPool(2) → Flatten → Linear(8→3) on 1×4×4 are
    2·4·4 + 2·4·4 + 2·2·2 + 8 + 3 = 83 floats = 332 bytes; MACs 2·16 outputs × 9.
    On the meta device (no storage) the probe must still run: it builds its example
    where the parameters are, not on a hard-coded device."""
    from torch import nn

    from fedweave.sim.conv_kernel import probe

    def net():
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))

    assert probe(net(), (1, 4, 4)) == (32 * 9, 83 * 4)
    with torch.device("meta"):
        model = net()
    assert probe(model, (1, 4, 4)) == (32 * 9, 83 * 4)
    model = net().train()
    probe(model, (1, 4, 4))
    assert model.training  # the probe's eval mode is undone


def test_conv_cohorts_are_capped_by_their_activations(tmp_path, images):
    """executor.cohort_memory_mb bounds stacked parameters and activations together: a
    budget of about two clients' worth gives cohorts of two (4 clients per round ⇒ 2
    cohorts a round), with the same updates as serial."""
    from fedweave.sim.conv_kernel import probe

    extra = base(images) + MODELS["cnn"]
    serial, _, exp = run_capturing(tmp_path, "s", extra)
    activations = probe(exp.model_factory(), (2, 8, 8))[1]
    per_client = 3 * exp.spec.num_params * 4 + 8 * activations  # 3 stacked copies + batch 8 × activations
    # conv1 + ReLU 2·(32·8·8), pool 32·4·4, conv2 + ReLU 2·(64·4·4), pool + flatten 2·(64·2·2),
    # fc + ReLU 2·512, logits 4 (four classes): float32
    assert activations == 4 * (2 * 32 * 64 + 32 * 16 + 2 * 64 * 16 + 2 * 64 * 4 + 2 * 512 + 4)
    budget_mb = 2.5 * per_client / 2**20
    rounds, _, exp = run_capturing(tmp_path, "v", extra + ["executor.kind=vectorized", f"executor.cohort_memory_mb={budget_mb}"])
    assert exp.executor.stats["cohorts"] == 4  # 2 rounds × (4 clients in cohorts of 2)
    assert len(serial) == len(rounds)


def test_activation_after_pooling_is_exact():
    """A ReLU directly before a max-pooling moves after it: outputs and every gradient are
    bit-identical to the original order (max commutes with ReLU; the gradient reaches
    the same input), including windows whose inputs are all negative (zero gradient
    either way) and overlapping, padded windows. Average pooling, Tanh, LeakyReLU and
    pooling that returns indices are left alone."""
    import copy

    from torch import nn

    from fedweave.sim.conv_kernel import activation_after_pooling

    torch.manual_seed(0)
    original = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)),
        nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))
    rewritten = copy.deepcopy(original)
    assert activation_after_pooling(rewritten) == 2
    assert [type(m).__name__ for m in rewritten[:3]] == ["Conv2d", "MaxPool2d", "ReLU"]
    assert [type(m).__name__ for m in rewritten[3]] == ["Conv2d", "MaxPool2d", "ReLU"]
    assert [type(m).__name__ for m in rewritten[4:7]] == ["Conv2d", "ReLU", "AvgPool2d"]  # not swapped
    x = torch.randn(5, 2, 8, 8)
    x[0] = -1 - x[0].abs()  # conv1's windows all negative for some channels
    outs = []
    for net in (original, rewritten):
        out = net(x)
        grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
        outs.append((out, grads))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        assert torch.equal(a, b)
    left_alone = nn.Sequential(nn.LeakyReLU(), nn.MaxPool2d(2), nn.Tanh(), nn.MaxPool2d(2), nn.ReLU(),
                               nn.MaxPool2d(2, return_indices=True))
    assert activation_after_pooling(left_alone) == 0


def test_conv_loop_trains_channels_last_on_the_rewritten_graph_and_leaves_the_model_alone(tmp_path, images):
    """The loop form's convolutions see channels-last minibatches and the rewritten
    order (pooling before ReLU); the experiment's own model keeps its order."""
    from torch import nn

    from fedweave.experiment import _execute
    from fedweave.rundir import RunDirectory

    cfg = load_config(None, base(images) + MODELS["cnn"] + ["executor.kind=vectorized", "executor.vectorized_kernel=conv-loop"])
    exp = build_experiment(cfg)
    start_executor(exp)
    kernel = exp.executor.kernel
    seen = []
    convs = [m for m in kernel.net.modules() if type(m).__name__ == "_CohortConv"]
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
             for m in convs]
    run_dir = RunDirectory(tmp_path / "loop")
    run_dir.create(cfg.to_yaml())
    _execute(exp, run_dir, None, None, executor_started=True)
    for h in hooks:
        h.remove()
    assert seen and all(seen)
    order = [type(m) for m in kernel.net[0]]
    assert order[:3] == [type(convs[0]), nn.MaxPool2d, nn.ReLU]
    assert [type(m) for m in exp.model_factory()[0]][:3] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]


@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_layers_step_themselves_unless_clipping_needs_their_gradient(tmp_path, images, kernel, monkeypatch):
    """Without clipping, the cohort's Linear layers apply the step in their backward (the
    gradient folded into the product, never materialised); with clipping, whose factor
    needs the whole gradient first, they return their gradient. Both end where serial
    does (test_conv_kernel_updates_match_serial); here: which path ran."""
    import fedweave.sim.conv_kernel as ck

    calls = []
    backward = ck._FusedLinear.backward
    monkeypatch.setattr(ck._FusedLinear, "backward", staticmethod(lambda ctx, delta: calls.append(1) or backward(ctx, delta)))
    extra = base(images) + MODELS["cnn"] + ["executor.kind=vectorized", f"executor.vectorized_kernel={kernel}"]
    run_capturing(tmp_path, "fused", extra + OPTIMIZERS["fedprox-momentum-wd"])
    assert calls  # two Linear layers per step
    calls.clear()
    run_capturing(tmp_path, "clipped", extra + OPTIMIZERS["momentum-wd-clip"])
    assert not calls
