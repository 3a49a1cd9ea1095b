"""FLTrust: trust scores and norm equalisation by hand; the root dataset requirement."""

from __future__ import annotations

import math

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.methods import build_method
from fedweave.methods.fltrust import fltrust_combine


def test_fltrust_combine_by_hand():
    g0 = torch.tensor([1.0, 0.0])  # |g0| = 1
    deltas = torch.tensor([[2.0, 0.0],    # cos 1, rescaled to [1, 0]
                           [0.0, 3.0],    # cos 0 -> trust 0
                           [-5.0, 0.0],   # cos -1 -> ReLU -> 0 (a sign-flipper)
                           [1.0, 1.0]])   # cos 1/sqrt2, rescaled to [1, 1]/sqrt2
    out, trust = fltrust_combine(deltas, g0)
    s = 1 / math.sqrt(2)
    assert torch.allclose(trust, torch.tensor([1.0, 0.0, 0.0, s]))
    expected = (1.0 * torch.tensor([1.0, 0.0]) + s * torch.tensor([s, s])) / (1 + s)
    assert torch.allclose(out, expected)


def test_all_distrusted_gives_no_update():
    out, trust = fltrust_combine(torch.tensor([[-1.0, 0.0]]), torch.tensor([1.0, 0.0]))
    assert torch.equal(out, torch.zeros(2)) and trust.tolist() == [0.0]


def test_fltrust_needs_a_root_dataset():
    with pytest.raises(ConfigError, match="server_fraction"):
        build_method(load_config({"method": {"name": "fltrust"}}))


def test_fltrust_runs_and_distrusts_sign_flippers(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "fltrust"}, "data": {"server_fraction": 0.05},
                             "attack": {"kind": "sign_flip", "fraction": 0.4, "scale": 3.0},
                             "schedule": {"clients_per_round": 5, "rounds": 3}}), out=tmp_path / "f")
    assert res.status == "completed"
    trust = [r["fltrust_mean_trust"] for r in res.history]
    assert all(0 <= t <= 1 for t in trust)
