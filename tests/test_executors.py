"""Executors give the same numbers: serial (reference), vectorized (float tolerance), Ray (bit for bit)."""

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment
from helpers_runs import run_capturing

BASE = [
    "data.partition.num_clients=8", "schedule.clients_per_round=4", "schedule.rounds=3", "eval.every=3",
    "model.hidden=[16]", "client.epochs=2", "client.batch_size=16",
]


def _run_capturing(tmp_path, name, overrides):
    return run_capturing(tmp_path, name, BASE + overrides)


def _assert_same_rounds(serial, vec):
    assert len(serial) == len(vec) == 3
    for a, b in zip(serial, vec):
        assert a.keys() == b.keys()
        for cid in a:
            da, steps_a, loss_a = a[cid]
            db, steps_b, loss_b = b[cid]
            assert steps_a == steps_b
            assert torch.allclose(da, db, atol=1e-5, rtol=1e-4), (cid, (da - db).abs().max())
            assert loss_a == pytest.approx(loss_b, rel=1e-4, abs=1e-5)


# The optimizer variants reach different code: the bmm kernel fuses plain SGD, weight
# decay, FedProx and momentum into its weight-gradient products, and materialises the
# gradients only when they are clipped; the func kernel always materialises them.
@pytest.mark.parametrize("kernel", ["auto", "func"])
@pytest.mark.parametrize("extra", [
    [],
    ["client.momentum=0.9", "client.weight_decay=0.001", "client.grad_clip=1.0"],
    ["method.name=fedprox", "client.mu=0.5", "client.local_steps=7"],
    ["method.name=fedprox", "client.mu=0.1", "client.momentum=0.5", "client.weight_decay=0.01"],
    ["model.name=logistic", "client.weight_decay=0.01", "client.epochs=3", "client.batch_size=7"],
])
def test_vectorized_updates_match_serial_every_round(tmp_path, extra, kernel, device):
    extra = extra + [f"executor.device={device}"]  # FEDWEAVE_TEST_DEVICE (tests/conftest.py)
    serial, rs, _ = _run_capturing(tmp_path, "s", extra)
    vec, rv, _ = _run_capturing(tmp_path, "v", extra + ["executor.kind=vectorized", f"executor.vectorized_kernel={kernel}"])
    _assert_same_rounds(serial, vec)
    assert rs.summary["final_accuracy"] == pytest.approx(rv.summary["final_accuracy"], abs=0.02)


def test_vectorized_kernel_choice(tmp_path):
    from fedweave.experiment import start_executor

    chosen = {}
    for name, extra in {
        "mlp": [], "logistic": ["model.name=logistic"], "func": ["executor.vectorized_kernel=func"],
        "cnn": ["data.dataset=digits", "model.name=cnn"], "mlp_norm": ["model.name=mlp_norm", "model.norm=group"],
    }.items():
        exp = build_experiment(load_config(None, BASE + ["executor.kind=vectorized"] + extra))
        start_executor(exp)
        chosen[name] = exp.executor.kernel_name
    # convolutional models get the conv kernel; what neither kernel accepts gets func
    assert chosen == {"mlp": "mlp", "logistic": "mlp", "func": "func", "cnn": "conv", "mlp_norm": "func"}


USER_MODELS = '''
from torch import nn

def tanh_mlp(input_shape, num_classes):
    size = 1
    for s in input_shape:
        size *= s
    return nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(size, 12), nn.Tanh()), nn.Linear(12, 9, bias=False),
                         nn.ReLU(), nn.Identity(), nn.Linear(9, num_classes))

def leaky_mlp(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.LeakyReLU(), nn.Linear(12, num_classes))
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "fw_vec_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fw_vec_models"


@pytest.mark.parametrize("extra", [[], ["client.momentum=0.9", "client.grad_clip=0.5"]])
def test_bmm_kernel_tanh_nested_and_biasless_layers_match_serial(tmp_path, user_models, extra):
    model = [f"model.name={user_models}:tanh_mlp"]
    serial, _, _ = _run_capturing(tmp_path, "s", model + extra)
    vec, _, _ = _run_capturing(tmp_path, "v", model + extra + ["executor.kind=vectorized"])
    _assert_same_rounds(serial, vec)


def test_mlp_layers_recognises_only_linear_stacks(user_models):
    from fedweave.models import build_model
    from fedweave.params import FlatModel
    from fedweave.sim.vectorized import mlp_layers

    def layers(module, shape=(1, 8, 8), roles=None):
        found = mlp_layers(FlatModel(module, roles or {}), shape)
        return None if found is None else [layer.kind for layer in found]

    assert layers(build_model("mlp", (1, 8, 8), 10, hidden=[5, 4])) == ["linear", "relu", "linear", "relu", "linear"]
    assert layers(build_model("logistic", (6,), 3), (6,)) == ["linear"]
    assert layers(build_model(f"{user_models}:tanh_mlp", (1, 8, 8), 10)) == ["linear", "tanh", "linear", "relu", "linear"]
    assert layers(build_model(f"{user_models}:leaky_mlp", (1, 8, 8), 10)) is None  # LeakyReLU has no bmm rule
    assert layers(build_model("mlp_norm", (1, 8, 8), 10, norm="group")) is None
    assert layers(build_model("cnn", (1, 8, 8), 10)) is None
    # a frozen layer, or image inputs without a leading Flatten: the func kernel instead
    assert layers(build_model("mlp", (1, 8, 8), 10, hidden=[5]), roles={"1.*": "frozen"}) is None
    assert layers(torch.nn.Sequential(torch.nn.Linear(8, 3)), (1, 8, 8)) is None


def test_classification_loss_gradient_closed_form_equals_autograd():
    from fedweave.tasks import Task, make_task

    task = make_task("classification")
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(12, 5, generator=gen) * 3
    target = torch.randint(0, 5, (12,), generator=gen)
    weight = torch.rand(12, generator=gen)
    weight[[3, 7]] = 0.0  # padding rows
    closed = task.weighted_loss_grad(out.clone(), target, weight)
    generic = Task.weighted_loss_grad(task, out.clone(), target, weight)  # autograd through per_example_loss
    for a, b in zip(closed, generic):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.all(closed[1][[3, 7]] == 0)


@pytest.mark.parametrize("mode", [
    ["schedule.mode=buffered", "method.name=fedbuff"],
    ["schedule.mode=async", "method.name=fedasync"],  # its client uploads the full trained vector
])
def test_vectorized_async_cohorts_match_serial(tmp_path, monkeypatch, mode):
    """Asynchronous cohorts: clients start from different global versions (no shared base)."""
    from fedweave.sim.executors import SerialExecutor
    from fedweave.sim.vectorized import VectorizedExecutor

    seen = {}
    for cls in (SerialExecutor, VectorizedExecutor):
        original = cls.collect

        def collect(self, handle, _original=original, _name=cls.__name__):
            result = _original(self, handle)
            u = result.update
            full = None if u.params is None else u.params.clone()
            seen.setdefault(_name, {})[(u.client_id, u.base_version)] = (u.delta.clone(), u.num_steps, full)
            return result

        monkeypatch.setattr(cls, "collect", collect)
    mode = mode + ["system.profile=tiers", "schedule.concurrency=5"]
    fedweave.run(None, out=tmp_path / "s", overrides=BASE + mode)
    fedweave.run(None, out=tmp_path / "v", overrides=BASE + mode + ["executor.kind=vectorized", "executor.max_cohort=3"])
    serial, vec = seen["SerialExecutor"], seen["VectorizedExecutor"]
    assert serial.keys() == vec.keys() and len({version for _, version in serial}) > 1
    for key, (delta, steps, full) in serial.items():
        assert vec[key][1] == steps
        assert (full is None) == (vec[key][2] is None)
        if full is not None:
            assert torch.allclose(full, vec[key][2], atol=1e-4, rtol=1e-3)
        # later versions were aggregated from slightly different updates: tolerance grows a little
        assert torch.allclose(delta, vec[key][0], atol=1e-4, rtol=1e-3), (key, (delta - vec[key][0]).abs().max())


def test_vectorized_refuses_unsupported_with_reason(tmp_path):
    with pytest.raises(ConfigError, match="SCAFFOLD|ScaffoldClient|customises"):
        fedweave.run(None, out=tmp_path / "x", overrides=BASE + ["executor.kind=vectorized", "method.name=scaffold"])
    with pytest.raises(ConfigError, match="buffers"):
        fedweave.run(None, out=tmp_path / "y", overrides=BASE + ["executor.kind=vectorized", "model.name=resnet", "model.norm=batch"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_auto_falls_back_to_serial_and_matches(tmp_path):
    a = fedweave.run(None, out=tmp_path / "a", overrides=BASE + ["method.name=scaffold"])
    b = fedweave.run(None, out=tmp_path / "b", overrides=BASE + ["method.name=scaffold", "executor.kind=auto"])
    assert torch.equal(a.params, b.params)


def test_auto_vectorizes_only_where_the_bmm_kernel_applies():
    from fedweave.experiment import start_executor
    from fedweave.sim.executors import SerialExecutor
    from fedweave.sim.vectorized import VectorizedExecutor

    def executor(extra):
        exp = build_experiment(load_config(None, BASE + ["executor.kind=auto"] + extra))
        start_executor(exp)
        return exp.executor

    assert isinstance(executor([]), VectorizedExecutor)
    # GroupNorm between Linear layers: neither the bmm nor the conv kernel applies
    norm_mlp = executor(["model.name=mlp_norm", "model.norm=group"])
    assert isinstance(norm_mlp, SerialExecutor) and "torch.func" in norm_mlp.fallback_reason
    forced = executor(["data.dataset=digits", "model.name=cnn", "executor.vectorized_kernel=func"])
    assert isinstance(forced, VectorizedExecutor) and forced.kernel_name == "func"


def test_vectorized_padding_efficiency_reported(tmp_path):
    """Only short last batches are padding: a client that has finished its steps leaves
    the cohort's active prefix, so the cohort computes batch × Σ steps example slots."""
    from fedweave.sim.vectorized import VectorizedExecutor

    rounds, _, exp = _run_capturing(tmp_path, "p", ["executor.kind=vectorized"])
    assert isinstance(exp.executor, VectorizedExecutor)
    stats = exp.executor.stats
    trained = [(cid, steps) for r in rounds for cid, (_, steps, _) in r.items()]
    assert stats["cohorts"] == 3 and len(trained) == 12  # one cohort per synchronous round of 4
    assert stats["useful"] == sum(2 * len(exp.data.client_train[cid]) for cid, _ in trained)  # 2 epochs
    assert stats["computed"] == 16 * sum(steps for _, steps in trained)  # batch 16
    assert stats["useful"] < stats["computed"]  # these clients' sizes are not multiples of 16
    assert exp.executor.padding_efficiency == stats["useful"] / stats["computed"]


def test_vectorized_cohorts_are_capped_by_memory(tmp_path, monkeypatch):
    """A big model gets smaller cohorts (stacked tensors and activations under
    COHORT_BYTES), same numbers."""
    from fedweave.sim import vectorized
    from fedweave.sim.conv_kernel import probe

    serial, _, exp = _run_capturing(tmp_path, "s", [])
    activations = probe(exp.model_factory(), tuple(exp.data.x.shape[1:]))[1]
    # 3 stacked copies of float32 parameters and a batch of activations per client
    two_clients = 2 * (3 * exp.spec.num_params * 4 + exp.config.client.batch_size * activations)
    monkeypatch.setattr(vectorized, "COHORT_BYTES", two_clients)
    rounds, _, exp = _run_capturing(tmp_path, "v", ["executor.kind=vectorized"])
    assert exp.executor.stats["cohorts"] == 6  # 4 clients per round in cohorts of 2
    _assert_same_rounds(serial, rounds)


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("mode", [
    [],
    ["schedule.mode=buffered", "system.profile=tiers", "schedule.concurrency=3"],
    ["schedule.mode=async", "method.name=fedasync", "system.profile=tiers", "schedule.concurrency=3"],
])
def test_ray_equals_serial_bit_for_bit(tmp_path, ray_runtime, mode):
    a = fedweave.run(None, out=tmp_path / "serial", overrides=BASE + mode)
    b = fedweave.run(None, out=tmp_path / "ray", overrides=BASE + mode + ["executor.kind=ray", "executor.num_workers=2"])
    assert torch.equal(a.params, b.params)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def test_ray_stateful_method_equals_serial(tmp_path, ray_runtime):
    a = fedweave.run(None, out=tmp_path / "s", overrides=BASE + ["method.name=scaffold"])
    b = fedweave.run(None, out=tmp_path / "r", overrides=BASE + ["method.name=scaffold", "executor.kind=ray"])
    assert torch.equal(a.params, b.params)
