"""executor.device, client.precision and executor.deterministic (issue #15, devices).

Device-dependent tests take the device from the ``device`` fixture (``FEDWEAVE_TEST_DEVICE``,
default cpu), so ``bench/gpu.sh`` runs the same tests on CUDA."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import fedweave
from fedweave.cli import app
from fedweave.core.device import check_precision, resolve_device, to_device
from fedweave.core.params import FlatModel
from fedweave.errors import ConfigError
from fedweave.sim import vectorized as vectorized_module
from fedweave.sim import worker as worker_module
from fedweave.sim.ray_executor import actor_resources
from fedweave.tasks import make_task
from fedweave.train import LossScaler, TrainSettings, local_train

NO_CUDA = not torch.cuda.is_available()


def _run(tiny, tmp_path, name, extra):
    return fedweave.run(tiny(extra), out=tmp_path / name)


# -- resolving executor.device ------------------------------------------------------------------
def test_cpu_and_auto_resolve_to_what_the_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_naming_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda")
    assert "no CUDA device is available" in str(err.value) and "auto, cpu, cuda or cuda:N" in str(err.value)


def test_an_index_beyond_the_devices_and_a_non_device_are_refused():
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 3}")
    for bad in ("tpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ConfigError, match="is not a device"):
            resolve_device(bad)


def test_a_cuda_index_beyond_the_machines_devices_names_the_indices_it_has(monkeypatch):
    """The index check itself (on a machine without CUDA the no-CUDA refusal comes first):
    a machine made to show two CUDA devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:7")
    assert "names CUDA device 7, but this machine has 2 (indices 0 to 1)" in str(err.value)
    assert "auto, cpu, cuda or cuda:N" in str(err.value)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda", 0)


def test_job_seeding_seeds_the_cuda_generator_of_the_jobs_device_as_the_cpus(monkeypatch):
    """Per-job seeding covers the CUDA generator: the job's device's generator gets the seed
    the CPU generator gets (no other device's), on a machine made to show two devices."""
    from fedweave.core.rng import seed_job_generators

    class Recorder:
        def __init__(self):
            self.seeds = []

        def manual_seed(self, seed):
            self.seeds.append(seed)

    generators = (Recorder(), Recorder())
    monkeypatch.setattr(torch.cuda, "default_generators", generators)
    seed_job_generators(3, 5, 7, torch.device("cuda", 1))
    cpu_seed = torch.initial_seed()
    seed_job_generators(3, 5, 8, torch.device("cuda", 1))
    assert generators[0].seeds == [] and generators[1].seeds == [cpu_seed, torch.initial_seed()]
    assert cpu_seed != torch.initial_seed()  # the job counter changes the seed
    seed_job_generators(3, 5, 7, torch.device("cpu"))
    assert torch.initial_seed() == cpu_seed and len(generators[1].seeds) == 2  # a CPU job leaves CUDA alone


def test_fp16_is_refused_on_the_cpu_and_bf16_allowed():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
    check_precision("fp32", torch.device("cpu"))


def _cli(tmp_path, monkeypatch, *sets):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--quiet", "--out", str(tmp_path / "run"), "--set", "schedule.rounds=1",
            "--set", "data.partition.num_clients=5", "--set", "schedule.clients_per_round=3"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    return result, " ".join(result.output.split())


@pytest.mark.parametrize("sets, needles", [
    (["executor.device=cuda:64"], ["executor.device='cuda:64'", "auto, cpu, cuda or cuda:N"]),
    (["executor.device=gpu0"], ["executor.device='gpu0'", "is not a device", "auto, cpu, cuda or cuda:N"]),
    (["client.precision=fp16", "executor.device=cpu"], ["client.precision=fp16 needs a CUDA device", "bf16 or fp32"]),
])
def test_the_cli_refuses_bad_devices_with_exit_2_and_no_run_directory(tmp_path, monkeypatch, sets, needles):
    before = sorted(p.name for p in tmp_path.iterdir())
    result, text = _cli(tmp_path, monkeypatch, *sets)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and text.startswith("error:"), result.output
    for needle in needles:
        assert needle in text, (needle, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_the_cli_refuses_cuda_on_a_machine_without_it(tmp_path, monkeypatch):
    result, text = _cli(tmp_path, monkeypatch, "executor.device=cuda")
    assert result.exit_code == 2 and "no CUDA device is available" in text, result.output
    assert not (tmp_path / "run").exists()


# -- nothing in the engine creates tensors on a hard-coded device --------------------------------
def _under_meta_default(fn):
    """``fn`` run with the default device set to ``meta``: a tensor made without naming
    its device lands on meta, and the first operation that mixes it with the job's real
    tensors raises (or its values are lost), so the run fails or its numbers change."""

    def wrapped(*args, **kwargs):
        with torch.device("meta"):
            return fn(*args, **kwargs)

    return wrapped


CASES = {
    "fedavg-serial": {},
    "fedprox-momentum-clip-serial": {"method": {"name": "fedprox"},
                                     "client": {"momentum": 0.9, "grad_clip": 1.0, "weight_decay": 1e-3}},
    "scaffold-serial": {"method": {"name": "scaffold"}},
    "fedper-serial": {"method": {"name": "fedper"}},
    # methods whose clients build tensors of their own during training
    "ditto-serial": {"method": {"name": "ditto"}},
    "fedrep-serial": {"method": {"name": "fedrep"}},
    "pgfed-serial": {"method": {"name": "pgfed"}},
    "fal-serial": {"method": {"name": "fal", "eps": 0.2, "steps": 2}},
    "flip-serial": {"method": {"name": "flip"}, "attack": {"kind": "backdoor", "fraction": 0.4, "trigger": {"size": 2}}},
    "frl-serial": {"method": {"name": "frl"}},
    "ferret-serial": {"method": {"name": "ferret", "block_size": 512, "num_vectors": 32}, "model": {"hidden": [32]}},
    "fsar-serial": {"method": {"name": "fsar"}},
    "fedins-serial": {"data": {"server_fraction": 0.2}, "method": {"name": "fedins"},
                      "model": {"name": "ssf_pool", "hidden": [16], "kwargs": {"pool_size": 4, "top_k": 2}}},
    "qffl-serial": {"method": {"name": "qffl"}},
    "fednova-serial": {"method": {"name": "fednova"}, "client": {"momentum": 0.5}},
    "fedavg-vectorized": {"executor": {"kind": "vectorized"}},
    "fedprox-momentum-vectorized": {"executor": {"kind": "vectorized"}, "method": {"name": "fedprox"},
                                    "client": {"momentum": 0.9}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_client_training_names_the_device_of_every_tensor_it_creates(tiny, tmp_path, monkeypatch, case, device):
    extra = {**CASES[case], "schedule": {"rounds": 2, "clients_per_round": 3}}
    extra["executor"] = {**extra.get("executor", {}), "device": device}
    reference = _run(tiny, tmp_path, "reference", extra)
    monkeypatch.setattr(worker_module.Worker, "run", _under_meta_default(worker_module.Worker.run))
    ex = vectorized_module.VectorizedExecutor
    monkeypatch.setattr(ex, "_run_pending", _under_meta_default(ex._run_pending))
    patched = _run(tiny, tmp_path, "patched", extra)
    assert patched.status == "completed"
    assert [r.get("accuracy") for r in patched.history] == [r.get("accuracy") for r in reference.history]
    assert torch.equal(patched.params, reference.params)


def test_the_summary_says_which_device_ran_the_clients(tiny, tmp_path):
    result = _run(tiny, tmp_path, "auto", {"schedule": {"rounds": 1}, "executor": {"device": "auto"}})
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert result.summary["device"].startswith(expected) and result.summary["device"].endswith("(auto)")


# -- local training on the fixture's device -----------------------------------------------------
def _tiny_model(device):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return FlatModel(module.to(device))


def test_local_train_on_the_device_matches_the_cpu_within_float_tolerance(device):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    s = TrainSettings(epochs=2, batch_size=8, lr=0.1, momentum=0.5)
    results = {}
    for dev, resident in (("cpu", True), (device, True), (device, False)):
        m = _tiny_model(dev)
        xs, ys = (x.to(dev), y.to(dev)) if resident else (x, y)
        r = local_train(m, make_task("classification"), xs, ys, torch.arange(40), s, torch.Generator().manual_seed(5))
        assert m.trained.device.type == torch.device(dev).type
        results[(dev, resident)] = (m.trained.cpu(), r.mean_loss)
    ref = results[("cpu", True)]
    for key, (w, loss) in results.items():
        torch.testing.assert_close(w, ref[0], rtol=1e-5, atol=1e-6)
        assert loss == pytest.approx(ref[1], rel=1e-5)


def test_bf16_autocasts_the_forward_pass_and_keeps_the_trained_vector_fp32(device):
    m = _tiny_model(device)
    seen = []
    m.module[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x, y = torch.randn(16, 6).to(device), torch.randint(0, 3, (16,)).to(device)
    before = m.trained.clone()
    s = TrainSettings(epochs=1, batch_size=8, lr=0.1, precision="bf16")
    r = local_train(m, make_task("classification"), x, y, torch.arange(16), s, torch.Generator().manual_seed(0))
    assert seen == [torch.bfloat16, torch.bfloat16]  # two minibatches, each linear output in bf16
    assert m.trained.dtype == torch.float32 and not torch.equal(m.trained, before)
    assert r.steps == 2 and r.mean_loss == r.mean_loss  # finite: not NaN


def test_bf16_runs_end_to_end_on_the_cpu_with_fp32_aggregation(tiny, tmp_path):
    result = _run(tiny, tmp_path, "bf16", {"schedule": {"rounds": 2}, "client": {"precision": "bf16"},
                                           "executor": {"device": "cpu"}})
    assert result.status == "completed" and result.params.dtype == torch.float32
    fp32 = _run(tiny, tmp_path, "fp32", {"schedule": {"rounds": 2}, "executor": {"device": "cpu"}})
    assert not torch.equal(result.params, fp32.params)  # autocast did change the arithmetic


def test_vectorized_refuses_reduced_precision_and_auto_falls_back(tiny, tmp_path):
    with pytest.raises(ConfigError, match="client.precision=bf16"):
        _run(tiny, tmp_path, "v", {"client": {"precision": "bf16"}, "executor": {"kind": "vectorized", "device": "cpu"}})
    result = _run(tiny, tmp_path, "a", {"schedule": {"rounds": 1}, "client": {"precision": "bf16"},
                                       "executor": {"kind": "auto", "device": "cpu"}})
    assert "client.precision=bf16" in result.summary["executor"]


# -- the fp16 loss scaler ---------------------------------------------------------------------
def test_loss_scaler_unscales_skips_overflow_halves_and_grows():
    scaler = LossScaler(scale=8.0, growth_interval=2)
    g = torch.tensor([8.0, -16.0])
    assert scaler.unscale(g) and torch.equal(g, torch.tensor([1.0, -2.0]))  # divided by 8
    assert scaler.scale == 8.0
    g = torch.tensor([8.0, 8.0])
    assert scaler.unscale(g) and scaler.scale == 16.0  # second finite step in a row: doubled
    assert not scaler.unscale(torch.tensor([float("inf"), 1.0]))
    assert scaler.scale == 8.0  # overflow: halved, the growth count restarts
    assert scaler.unscale(torch.tensor([1.0])) and scaler.scale == 8.0


# -- moving results, Ray resources, determinism -------------------------------------------------
def test_to_device_leaves_tensors_already_there_untouched(device):
    t = torch.ones(3, device=device)
    nested = {"a": [t, (t, 1)], "b": "x"}
    moved = to_device(nested, torch.device(device))
    assert moved["a"][0] is t and moved["a"][1][0] is t and moved["b"] == "x"
    assert to_device(torch.ones(2), torch.device("meta")).device.type == "meta"


def test_ray_actors_reserve_a_cpu_and_the_fraction_of_a_gpu_asked_for():
    assert actor_resources(0.0) == {"num_cpus": 1}
    assert actor_resources(0.25) == {"num_cpus": 1, "num_gpus": 0.25}


def test_deterministic_changes_no_cpu_number_and_is_restored_after_the_run(tiny, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    plain = _run(tiny, tmp_path, "plain", {"schedule": {"rounds": 2}, "executor": {"device": "cpu"}})
    det = _run(tiny, tmp_path, "det", {"schedule": {"rounds": 2}, "executor": {"device": "cpu", "deterministic": True}})
    assert torch.equal(plain.params, det.params)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("budget", [None, 0.001])
def test_serial_and_vectorized_agree_on_the_device_with_data_resident_or_pinned(tiny, tmp_path, device, budget):
    """``executor.data_memory_mb`` tiny: on CUDA the data stays in pinned host memory and
    every minibatch is copied over; the numbers must not change (on the CPU: no effect)."""
    ex = {"device": device, "data_memory_mb": budget}
    serial = _run(tiny, tmp_path, "s", {"executor": ex})
    vec = _run(tiny, tmp_path, "v", {"executor": {**ex, "kind": "vectorized"}})
    resident = _run(tiny, tmp_path, "r", {"executor": {"device": device}})
    torch.testing.assert_close(vec.params, serial.params, rtol=1e-4, atol=1e-5)
    assert torch.equal(serial.params, resident.params)  # the data's place changes no number


# -- aggregation of the stacked updates on the device ---------------------------------------
def test_device_safe_combiners_get_the_stacked_updates_on_the_device_and_others_on_the_host():
    from types import SimpleNamespace

    from fedweave.methods.stages import combine, mean_combiner
    from fedweave.methods.robust import RobustCombiner

    assert mean_combiner.device_safe and RobustCombiner.device_safe
    seen = []

    def probe(deltas, weights, state, ctx):
        seen.append((deltas.device.type, weights.device.type))
        return torch.full((deltas.shape[1],), 2.0)  # made on the host: comes back as it is

    deltas, weights = torch.randn(3, 4), torch.ones(3, dtype=torch.float64)
    ctx = SimpleNamespace(device=torch.device("meta"))  # meta: any device other than the updates'
    out = combine(probe, deltas, weights, None, ctx)
    assert seen == [("cpu", "cpu")] and torch.equal(out, torch.full((4,), 2.0))  # not declared safe
    probe.device_safe = True
    combine(probe, deltas, weights, None, ctx)
    assert seen[-1] == ("meta", "meta")


@pytest.mark.parametrize("method", ["fedavg", "median", "krum"])
def test_aggregation_on_the_device_matches_the_cpu_within_float_tolerance(tiny, tmp_path, device, method):
    extra = {"method": {"name": method}, "schedule": {"rounds": 2}}
    on_cpu = _run(tiny, tmp_path, "cpu", {**extra, "executor": {"device": "cpu"}})
    on_device = _run(tiny, tmp_path, "dev", {**extra, "executor": {"device": device}})
    assert on_device.params.device.type == "cpu"  # the server's state stays in host memory
    torch.testing.assert_close(on_device.params, on_cpu.params, rtol=1e-3, atol=1e-4)


def test_gpus_per_worker_without_ray_is_flagged_as_having_no_effect():
    from fedweave.config import inapplicable_keys, load_config

    problems = inapplicable_keys(load_config(None, ["executor.gpus_per_worker=0.5"]))
    assert problems == ["executor.gpus_per_worker=0.5 has no effect: it is used only with executor.kind ray."]
    assert inapplicable_keys(load_config(None, ["executor.gpus_per_worker=0.5", "executor.kind=ray"])) == []


def test_ray_actors_are_planned_to_fit_the_runtimes_gpus_and_cpus():
    """Every actor reserves a CPU and gpus_per_worker GPUs: an actor Ray cannot place stays
    pending for ever, so what cannot fit is refused and an unset num_workers is what fits."""
    from fedweave.sim.ray_executor import plan_actors

    assert plan_actors(None, 0.0, cpus=16, gpus=0) == 16  # no GPU share: one actor per CPU
    assert plan_actors(None, 0.25, cpus=16, gpus=1) == 4  # four quarter shares of one GPU
    assert plan_actors(None, 0.25, cpus=3, gpus=2) == 3  # the CPUs bound it first
    assert plan_actors(8, 0.25, cpus=16, gpus=2) == 8  # the documented example: 8 quarters on 2 GPUs
    assert plan_actors(2, 2.0, cpus=8, gpus=4) == 2
    with pytest.raises(ConfigError, match=r"gpus_per_worker=5 asks each Ray actor for 5 GPU\(s\), but the Ray "
                                          r"runtime has 0.*Allowed values: 0"):
        plan_actors(None, 5.0, cpus=2, gpus=0)
    with pytest.raises(ConfigError, match=r"num_workers=8: 8 actors of 0.25 GPU each need 2 GPUs.*at most 4"):
        plan_actors(8, 0.25, cpus=16, gpus=1)
    with pytest.raises(ConfigError, match=r"num_workers=4: 4 actors need 4 CPUs.*at most 2"):
        plan_actors(4, 0.0, cpus=2, gpus=0)
    with pytest.raises(ConfigError, match=r"gpus_per_worker=1.5: Ray takes a fraction of one GPU or a whole number"):
        plan_actors(None, 1.5, cpus=8, gpus=4)
    from fedweave.config import ExecutorConfig
    from fedweave.sim.executors import check_executor

    with pytest.raises(ConfigError, match=r"gpus_per_worker=1.5: Ray takes"):  # before Ray or the data start
        check_executor(ExecutorConfig(kind="ray", gpus_per_worker=1.5))


@pytest.mark.timeout(180)
def test_the_cli_refuses_more_gpus_per_ray_actor_than_the_machine_has(tmp_path, monkeypatch):
    """Before: the actor that could not be placed stayed pending and the run waited for ever
    on its first job, its run directory written."""
    pytest.importorskip("ray")
    gpus = torch.cuda.device_count()
    result, text = _cli(tmp_path, monkeypatch, "executor.kind=ray", "executor.num_workers=1",
                        f"executor.gpus_per_worker={gpus + 1}")
    assert result.exit_code == 2, result.output
    assert f"executor.gpus_per_worker={gpus + 1} asks each Ray actor" in text and "Allowed values" in text, text
    assert not (tmp_path / "run").exists()


def test_checkpoints_and_spilled_states_load_onto_the_host(tmp_path, monkeypatch):
    """A checkpoint or spilled client state written on a GPU machine loads on one without:
    every ``torch.load`` of the run directory and the store maps storages to the CPU."""
    from fedweave.core.state_store import ClientStateStore

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    store = ClientStateStore(100, tmp_path / "spill")  # 100 bytes: all but the newest state spills
    store.put(3, {"c": torch.arange(64, dtype=torch.float32)})
    store.put(4, {"c": torch.zeros(64)})
    assert store.spills == 1
    assert torch.equal(store.get(3)["c"], torch.arange(64, dtype=torch.float32))
    from fedweave.rundir import RunDirectory

    ckpt = RunDirectory(tmp_path / "run2")
    ckpt.create("name: x\n")
    ckpt.save_checkpoint({"state": {"params": torch.ones(2)}})
    assert torch.equal(ckpt.load_checkpoint()["state"]["params"], torch.ones(2))
    assert calls and all(c == "cpu" for c in calls), calls


def test_ray_with_a_cuda_device_needs_gpus_per_worker_and_auto_says_cpu_without():
    from fedweave.config import ExecutorConfig
    from fedweave.sim.executors import check_executor, executor_device

    with pytest.raises(ConfigError, match="needs executor.gpus_per_worker > 0"):
        check_executor(ExecutorConfig(kind="ray", device="cuda"))
    assert executor_device(ExecutorConfig(kind="ray", device="auto")).startswith("cpu")
    assert executor_device(ExecutorConfig(kind="serial", device="cpu")) == "cpu"


# -- evaluation on the device -------------------------------------------------------------------

EVAL_CASE = {"method": {"name": "fedper"}, "schedule": {"rounds": 2},
             "eval": {"personalized": True, "per_client": True}}
EVAL_KEYS = ("accuracy", "loss", "client_acc_mean", "client_acc_worst10", "personalized_acc_mean", "personalized_acc_worst10")


def test_the_device_branch_of_evaluation_gives_the_hosts_figures(tiny, tmp_path, monkeypatch):
    """The test split, per-client and personalized figures computed through the device
    branch (a model copy synchronised per client, the validation set gathered once and
    sliced client by client) equal the host branch's — here both on the CPU, so exactly."""
    from fedweave.sim.ledger import RoundLedger

    host = _run(tiny, tmp_path, "host", {**EVAL_CASE, "executor": {"device": "cpu"}})
    monkeypatch.setattr(RoundLedger, "_evaluates_on_host", lambda self: False)
    branch = _run(tiny, tmp_path, "branch", {**EVAL_CASE, "executor": {"device": "cpu"}})
    for a, b in zip(host.history, branch.history):
        assert all(k in a for k in EVAL_KEYS)
        assert {k: a[k] for k in EVAL_KEYS} == {k: b[k] for k in EVAL_KEYS}
        assert a["client_scores"] == b["client_scores"]


OBSERVED = {"data": {"dataset": "digits"}, "schedule": {"rounds": 2},
            "attack": {"kind": "backdoor", "fraction": 0.4, "target": 0, "trigger": {"size": 2}},
            "eval": {"robust_accuracy": True, "robust_eps": 0.1, "robust_steps": 2, "robust_max_examples": 100,
                     "reject_threshold": 0.4}}
OBSERVED_KEYS = ("attack_success_rate", "attack_success_rate_no_rejection", "robust_accuracy",
                 "accuracy_with_rejection", "rejection_rate")


def test_observers_get_the_device_model_and_give_the_hosts_figures(tiny, tmp_path, monkeypatch):
    """Attack success, PGD robust accuracy and the rejection rule evaluated through the
    device branch (the observers get the evaluation model's device copy and move their
    batches to it) equal the host branch's."""
    from fedweave.sim.ledger import RoundLedger

    host = _run(tiny, tmp_path, "host", {**OBSERVED, "executor": {"device": "cpu"}})
    monkeypatch.setattr(RoundLedger, "_evaluates_on_host", lambda self: False)
    branch = _run(tiny, tmp_path, "branch", {**OBSERVED, "executor": {"device": "cpu"}})
    for a, b in zip(host.history, branch.history):
        assert all(k in a for k in OBSERVED_KEYS), sorted(a)
        assert {k: a[k] for k in OBSERVED_KEYS} == {k: b[k] for k in OBSERVED_KEYS}


@pytest.mark.parametrize("case", ["personalized", "observers"])
def test_evaluation_on_the_device_matches_the_cpu_within_float_tolerance(tiny, tmp_path, device, case):
    extra, keys = {"personalized": (EVAL_CASE, EVAL_KEYS), "observers": (OBSERVED, OBSERVED_KEYS)}[case]
    on_cpu = _run(tiny, tmp_path, "cpu", {**extra, "executor": {"device": "cpu"}})
    on_device = _run(tiny, tmp_path, "dev", {**extra, "executor": {"device": device}})
    for a, b in zip(on_cpu.history, on_device.history):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-3), key


def test_a_flat_model_keeps_its_storage_where_the_module_is():
    """The worker wraps ``model_factory().to(device)``: the flat buffer (and the gradient
    buffer) must be allocated there, or every parameter would be rebound to host memory
    and CUDA training would mix devices. The meta device stands in for CUDA here."""
    from torch import nn

    with torch.device("meta"):
        module = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    flat = FlatModel(module)  # built outside the meta context: the default device is the CPU
    assert flat.flat.device.type == "meta" and flat.grad.device.type == "meta"
    assert all(p.device.type == "meta" for p in module.parameters())
    on_host = FlatModel(nn.Linear(3, 2))
    assert on_host.flat.device.type == "cpu"


def test_channels_last_feeds_nhwc_minibatches_and_keeps_the_numbers_within_float_tolerance(tiny, tmp_path, monkeypatch):
    """executor.channels_last: the first convolution of every step sees a channels-last
    minibatch, and the run ends where the default layout's run ends, within float
    tolerance (another convolution algorithm sums in another order)."""
    from torch import nn

    import numpy as np

    rng = np.random.default_rng(0)  # three channels: with one, NCHW and NHWC are the same layout
    y = rng.integers(0, 4, 300)
    np.savez(tmp_path / "rgb.npz", x=(rng.normal(size=(300, 3, 8, 8)) + y[:, None, None, None]).astype(np.float32), y=y)
    extra = {"data": {"dataset": "npz", "root": str(tmp_path / "rgb.npz")}, "model": {"name": "cnn"},
             "schedule": {"rounds": 2}}
    plain = _run(tiny, tmp_path, "nchw", extra)
    seen = []
    original = nn.Conv2d.forward

    def recording(self, x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return original(self, x)

    monkeypatch.setattr(nn.Conv2d, "forward", recording)
    nhwc = _run(tiny, tmp_path, "nhwc", {**extra, "executor": {"channels_last": True}})
    monkeypatch.setattr(nn.Conv2d, "forward", original)
    assert seen and sum(seen) >= len(seen) / 2  # the training steps' convolutions (evaluation keeps NCHW)
    torch.testing.assert_close(nhwc.params, plain.params, rtol=1e-4, atol=1e-5)
    assert nhwc.history[-1]["accuracy"] == pytest.approx(plain.history[-1]["accuracy"], abs=0.01)
