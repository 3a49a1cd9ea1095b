"""Turbulence prediction (fedweave.tasks.turbulence): the regression task's metrics by hand, the
FNO spectral layer against a direct DFT, resolution invariance, the Burgers' solver
against the Cole–Hopf exact solution, the generator's spectrum against its target, the
data set's determinism and clients, and tiny end-to-end runs in every mode over the
uam_wireless channel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedweave.data.sources import load_source
from fedweave.errors import ConfigError, ModelError
from fedweave.experiment import run
from fedweave.tasks.turbulence import (
    FNO1d,
    RegressionTask,
    SpectralConv1d,
    build_fno1d,
    corridor_intensity,
    initial_spectrum,
    random_fields,
    solve_burgers,
)


def test_regression_metrics_by_hand():
    out = torch.tensor([[[1.0, 2.0, 2.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    y = torch.tensor([[[1.0, 2.0, 3.0, 1.0]], [[3.0, 0.0, 4.0, 0.0]]])
    sums = RegressionTask().metric_sums(out, y)
    # example 1: errors (0,0,1,1): mse 0.5, ‖e‖ = √2, ‖y‖ = √15; example 2: mse 25/4, ‖e‖ = 5 = ‖y‖
    assert sums["loss"] == pytest.approx(0.5 + 6.25)
    assert sums["rel_l2"] == pytest.approx(math.sqrt(2 / 15) + 1.0)
    assert sums["rmse"] == pytest.approx(math.sqrt(0.5) + 2.5)
    assert RegressionTask().loss(out, y).item() == pytest.approx((0.5 + 6.25) / 2)
    assert RegressionTask().higher_is_better is False and RegressionTask().metric_name == "rel_l2"


def test_spectral_layer_matches_direct_dft():
    torch.manual_seed(0)
    layer = SpectralConv1d(2, 3, modes=3).double()
    with torch.no_grad():
        layer.weight.normal_()
    n = 8
    x = torch.randn(2, 2, n, dtype=torch.float64)
    got = layer(x).detach().numpy()
    w = layer.weight.detach().numpy()
    w = w[..., 0] + 1j * w[..., 1]  # [in, out, modes]
    xs = x.numpy()
    expected = np.zeros((2, 3, n))
    for b in range(2):
        for o in range(3):
            for pos in range(n):
                total = 0.0
                for k in range(3):
                    # v̂_{i,k} = (1/N) Σ_m v_{i,m} e^(−2πikm/N); ŵ_{o,k} = Σ_i v̂_{i,k} R_{i,o,k}
                    coef = sum(sum(xs[b, i, m] * np.exp(-2j * np.pi * k * m / n) for m in range(n)) / n * w[i, o, k]
                               for i in range(2))
                    term = coef * np.exp(2j * np.pi * k * pos / n)
                    total += term.real if k == 0 else 2 * term.real  # Hermitian partner of k > 0
                expected[b, o, pos] = total
    assert np.allclose(got, expected, atol=1e-12)


def test_spectral_layer_is_resolution_invariant_on_band_limited_signals():
    torch.manual_seed(1)
    layer = SpectralConv1d(3, 2, modes=5).double()

    def signal(n):  # band-limited: modes 0..4 only
        x = torch.arange(n, dtype=torch.float64) / n
        rows = [0.3 + torch.sin(2 * math.pi * x) - 0.5 * torch.cos(2 * math.pi * 3 * x + c) + 0.2 * torch.sin(8 * math.pi * x)
                for c in (0.0, 0.7, 1.9)]
        return torch.stack(rows).unsqueeze(0)

    coarse, fine = layer(signal(16)), layer(signal(128))
    assert torch.allclose(fine[..., ::8], coarse, atol=1e-12)
    assert coarse.abs().max() > 0.01  # the layer does something


def test_fno_maps_fields_to_fields_and_rejects_too_many_modes():
    model = build_fno1d((1, 32), 4, width=8, modes=16, depth=2, proj=8)
    assert isinstance(model, FNO1d)
    assert model(torch.randn(5, 1, 32)).shape == (5, 1, 32)
    with pytest.raises(ModelError, match="allowed: 1 <= modes <= 16"):
        build_fno1d((1, 32), 4, modes=17)
    with pytest.raises(ModelError, match="1-D field"):
        build_fno1d((1, 28, 28), 10)


def test_burgers_solver_matches_cole_hopf_solution():
    # Cole–Hopf: u = −2ν ∂x log φ, φ_t = ν φ_xx; φ = 2 + e^(−4π²νt) cos 2πx gives
    # u(x, t) = 4πν e^(−4π²νt) sin 2πx / (2 + e^(−4π²νt) cos 2πx)
    n = 128
    x = np.arange(n) / n
    for nu in (0.02, 0.05):
        def exact(t):
            e = math.exp(-4 * math.pi**2 * nu * t)
            return 4 * math.pi * nu * e * np.sin(2 * math.pi * x) / (2 + e * np.cos(2 * math.pi * x))
        u = solve_burgers(exact(0.0)[None, :], viscosity=nu, final_time=1.0)[0]
        assert np.abs(u - exact(1.0)).max() < 1e-6 * np.abs(exact(1.0)).max() + 1e-9


def test_generator_spectrum_matches_target():
    m = 4000
    a = random_fields(m, 64, 1.3, np.random.default_rng(0))
    power = (np.abs(np.fft.rfft(a, norm="forward")) ** 2).mean(axis=0)
    k = np.arange(1, 12)
    # |c_k|² is exponential with mean S_k: the mean of m draws has relative sd 1/√m
    assert np.all(np.abs(power[k] / initial_spectrum(k, 1.3) - 1) < 4 / math.sqrt(m))
    assert power[0] == pytest.approx(0.0, abs=1e-20)


def test_burgers_source_inputs_have_each_corridors_spectrum_and_are_deterministic():
    src = load_source("burgers1d:2:32:400", seed=3)
    again = load_source("burgers1d:2:32:400", seed=3)
    assert torch.equal(src.x_train, again.x_train) and torch.equal(src.y_train, again.y_train)
    assert not torch.equal(src.x_train, load_source("burgers1d:2:32:400", seed=4).x_train)
    assert src.x_train.shape == (800, 1, 32) and src.x_test.shape == (200, 1, 32)
    assert src.y_train.dtype == torch.float32 and np.bincount(src.client_ids).tolist() == [400, 400]
    k = np.arange(1, 6)
    for c in (0, 1):
        a = src.x_train[src.client_ids == c, 0].double().numpy()
        power = (np.abs(np.fft.rfft(a, norm="forward")) ** 2).mean(axis=0)
        assert np.all(np.abs(power[k] / initial_spectrum(k, corridor_intensity(c, 2)) - 1) < 4 / math.sqrt(400))


def test_bad_burgers_names_are_config_errors():
    for name in ("burgers1d:1", "burgers1d:4:30", "burgers1d:x", "burgers1d:4:64:2"):
        with pytest.raises(ConfigError, match="burgers1d"):
            load_source(name)


TINY = ["data.dataset=burgers1d:4:32:12", "data.partition.kind=natural", "task.kind=regression", "model.name=fno1d",
        "model.width=8", "model.kwargs={modes: 6, depth: 2, proj: 16}", "client.optimizer=adam", "client.lr=0.005",
        "client.epochs=1", "client.batch_size=4", "schedule.clients_per_round=4", "schedule.rounds=6",
        "system.profile=uam_wireless", "system.uplink_mbps=0.5", "system.uam.retry_s=1.0"]


@pytest.mark.parametrize("mode,method", [("sync", "fedavg"), ("async", "afl_staleness"), ("buffered", "fedbuff")])
def test_tiny_end_to_end_runs_over_the_channel(tmp_path, mode, method):
    overrides = TINY + [f"schedule.mode={mode}", f"method.name={method}"]
    if mode == "buffered":
        overrides.append("schedule.buffer_size=2")
    first = run(None, out=tmp_path / "a", overrides=overrides)
    assert first.summary["status"] == "completed"
    errors = [r["rel_l2"] for r in first.history]
    assert all(math.isfinite(e) for e in errors) and errors[-1] < errors[0]
    again = run(None, out=tmp_path / "b", overrides=overrides)
    assert [r["rel_l2"] for r in again.history] == errors
    assert [r["virtual_time_s"] for r in again.history] == [r["virtual_time_s"] for r in first.history]


def test_vectorized_executor_runs_the_fno_like_the_serial_one(tmp_path):
    overrides = TINY + ["schedule.mode=sync", "method.name=fedavg", "client.optimizer=sgd", "client.lr=0.05",
                        "schedule.rounds=2"]
    serial = run(None, out=tmp_path / "s", overrides=overrides + ["executor.kind=serial"])
    vectorized = run(None, out=tmp_path / "v", overrides=overrides + ["executor.kind=vectorized"])
    assert "vectorized" in vectorized.summary["executor"]
    assert [r["rel_l2"] for r in vectorized.history] == pytest.approx([r["rel_l2"] for r in serial.history], rel=1e-6)


def test_async_run_over_the_channel_resumes_to_the_uninterrupted_numbers(tmp_path):
    import json

    overrides = TINY + ["schedule.mode=async", "method.name=afl_staleness", "output.checkpoint_every=3"]
    ref = run(None, out=tmp_path / "ref", overrides=overrides)

    def stop(done, total, record):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(None, out=tmp_path / "int", overrides=overrides, progress=stop)
    from fedweave.experiment import resume

    resumed = resume(tmp_path / "int")

    def records(path):
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
                for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert resumed.summary["status"] == "completed"
    assert records(tmp_path / "int") == records(tmp_path / "ref")
    assert torch.equal(resumed.params, ref.params)
