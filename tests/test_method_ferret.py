"""Ferret: unbiased reconstruction, identical shared bases across processes, bytes, bad inputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fedweave
from fedweave.errors import ConfigError
from fedweave.messages import SCALAR_BYTES
from fedweave.methods.ferret import basis, blocks, num_coefficients, project, reconstruct

SRC = Path(__file__).resolve().parents[1] / "src"


def test_blocks_cover_the_vector():
    assert blocks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert num_coefficients(10, 4, 3) == 3 + 3 + 2  # a block no larger than n is sent raw


def test_reconstruction_is_unbiased_at_the_documented_scale():
    torch.manual_seed(0)
    d, n, trials = 60, 4, 3000
    delta = torch.randn(d, dtype=torch.float64)
    delta /= delta.norm()
    total = torch.zeros(d, dtype=torch.float64)
    sq_err = 0.0
    for version in range(trials):  # every version draws fresh bases
        est = reconstruct(project(delta, 7, version, d, n), 7, version, d, d, n)
        total += est
        sq_err += float((est - delta).square().sum())
    mean = total / trials
    # E[Δ̂] = Δ: the error of the mean shrinks like √((d+1)/(n·trials)) ≈ 0.07 here
    assert float((mean - delta).norm()) < 0.15
    assert float(mean @ delta) == pytest.approx(1.0, abs=0.1)  # no scale bias (the official 1/3 would fail)
    # and the documented variance E‖Δ̂ − Δ‖² = (d + 1)/n ‖Δ‖²
    assert sq_err / trials == pytest.approx((d + 1) / n, rel=0.15)


def test_blocks_and_raw_blocks():
    delta = torch.randn(23)
    coeffs = project(delta, 1, 0, 10, 5)
    assert coeffs.numel() == 5 + 5 + 3  # last block of 3 ≤ n travels as it is
    assert torch.equal(coeffs[-3:], delta[-3:])
    out = reconstruct(coeffs, 1, 0, 23, 10, 5)
    assert torch.equal(out[-3:], delta[-3:])
    # the basis of a block depends on (seed, version, block) only
    assert torch.equal(basis(1, 0, 1, 5, 10), basis(1, 0, 1, 5, 10))
    assert not torch.equal(basis(1, 0, 1, 5, 10), basis(1, 1, 1, 5, 10))
    assert not torch.equal(basis(1, 0, 0, 5, 10), basis(1, 0, 1, 5, 10))


_CHILD = """
import hashlib, sys, torch
sys.path.insert(0, {src!r})
torch.set_num_threads(3)
from fedweave.methods.ferret import basis
h = hashlib.sha256()
for block in range(3):
    h.update(basis(123, 5, block, 16, 5000).numpy().tobytes())
print(h.hexdigest())
"""


def test_generators_give_identical_bases_in_another_process():
    torch.set_num_threads(1)
    h = hashlib.sha256()
    for block in range(3):
        h.update(basis(123, 5, block, 16, 5000).numpy().tobytes())
    out = subprocess.run([sys.executable, "-c", _CHILD.format(src=str(SRC))], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == h.hexdigest()


def _tiny(tiny, **method):
    return tiny({"method": {"name": "ferret", **method}, "model": {"hidden": [32]}, "schedule": {"rounds": 2}})


def test_ferret_uploads_coefficients_and_counts_their_bytes(tiny, tmp_path):
    cfg = _tiny(tiny, block_size=512, num_vectors=32)
    res = fedweave.run(cfg, out=tmp_path / "ferret")
    avg = fedweave.run(tiny({"model": {"hidden": [32]}, "schedule": {"rounds": 2}}), out=tmp_path / "fedavg")
    p = res.summary["num_params"]
    k = num_coefficients(p, 512, 32)
    updates = res.summary["client_updates"]
    assert res.summary["bytes_up"] == updates * (4 * k + SCALAR_BYTES * 5)
    assert avg.summary["bytes_up"] == updates * (4 * p + SCALAR_BYTES * 5)
    assert res.summary["bytes_down"] == avg.summary["bytes_down"]  # the downlink is the full model for both
    assert res.history[-1]["ferret_compression"] == pytest.approx(p / k)
    assert res.status == "completed"


def test_ferret_server_applies_the_reconstruction():
    """The server step is −η_s times the reconstruction of the size-weighted mean coefficients."""
    from fedweave.messages import Update
    from fedweave.methods.base import ServerContext, ServerState
    from fedweave.methods.ferret import FerretStrategy

    torch.manual_seed(0)
    p = 50
    delta = torch.randn(p)  # Δ = θ0 − θτ
    coeffs = project(delta, 3, 0, 20, 4)
    strat = FerretStrategy(20, 4, server_lr=0.5)
    state = ServerState(torch.zeros(p), torch.zeros(0))
    ctx = ServerContext(spec=None, num_clients=2, client_sizes=None, clock=None, seed=3)
    ups = [Update(0, 0, None, torch.zeros(0), 10, payload={"coefficients": coeffs}),
           Update(1, 0, None, torch.zeros(0), 30, payload={"coefficients": 3 * coeffs})]
    new = strat.aggregate(ups, state, ctx)
    expected = -0.5 * reconstruct((0.25 + 0.75 * 3) * coeffs, 3, 0, p, 20, 4)
    assert torch.allclose(new.params, expected, atol=1e-6) and new.version == 1


def test_ferret_bad_inputs(tiny):
    with pytest.raises(ConfigError, match="larger than the model"):
        fedweave.build_experiment(fedweave.load_config(_tiny(tiny, block_size=10**7)))
    with pytest.raises(ConfigError, match="smaller than method.block_size"):
        fedweave.build_experiment(fedweave.load_config(_tiny(tiny, block_size=64, num_vectors=64)))
    cfg = _tiny(tiny, block_size=512)
    cfg["privacy"] = {"dp": {"clip": 1.0, "noise_multiplier": 0.5}}
    with pytest.raises(ConfigError, match="privacy.dp"):
        fedweave.build_experiment(fedweave.load_config(cfg))
