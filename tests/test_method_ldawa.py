"""L-DAWA: identical clients after warm-up return their model (δ = 1), layer-wise
cosines against a hand computation, the warm-up, and negative-cosine handling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import fedweave
from fedweave.methods import build_method
from fedweave.methods.ldawa import layer_slices, ldawa_combine, ldawa_cosines
from fedweave.params import ParamSpec

# two layers: "0" = weight [2, 2] + bias [2] (6 numbers), "1" = weight [1, 2] + bias [1] (3 numbers)
SPEC = ParamSpec.from_module(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
WG = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, -0.5, 2.0, 1.0, 0.0], dtype=torch.float64)


def _state(round_: int, params=WG):
    return SimpleNamespace(round=round_, params=params.clone(), extra={})


def _combiner(tiny, **method):
    strategy, _ = build_method(fedweave.load_config(tiny({"method": {"name": "ldawa", **method}})))
    return strategy.combiner


def test_layers_are_modules_by_default_and_tensors_on_request():
    assert layer_slices(SPEC) == [slice(0, 6), slice(6, 9)]
    assert layer_slices(SPEC, "tensor") == [slice(0, 4), slice(4, 6), slice(6, 8), slice(8, 9)]


def test_clients_at_the_global_model_return_it(tiny):
    combine = _combiner(tiny)
    deltas = torch.zeros(3, 9, dtype=torch.float64)
    ctx = SimpleNamespace(spec=SPEC)
    out = combine(deltas, torch.ones(3, dtype=torch.float64), _state(5), ctx)
    assert torch.allclose(out, torch.zeros(9, dtype=torch.float64), atol=1e-12)  # δ = 1 up to rounding


def test_identical_clients_along_the_global_direction_return_their_model(tiny):
    combine = _combiner(tiny)
    wk = 1.5 * WG  # cos(w_k, w_g) = 1 in every layer: δ = 1
    deltas = (wk - WG).repeat(4, 1)
    new = WG + combine(deltas, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), _state(3), SimpleNamespace(spec=SPEC))
    assert torch.allclose(new, wk, atol=1e-12)


def test_layerwise_cosines_and_scaling_match_hand_computation():
    w1 = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, -0.5, 1.0, 2.0, 0.0], dtype=torch.float64)
    w2 = torch.tensor([-1.0, 0.0, 0.0, -1.0, -0.5, 0.5, 2.0, 1.0, 0.5], dtype=torch.float64)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    g, a, b = WG.tolist(), w1.tolist(), w2.tolist()
    expected = [[cos(a[:6], g[:6]), cos(a[6:], g[6:])], [cos(b[:6], g[:6]), cos(b[6:], g[6:])]]
    assert expected[1][0] == pytest.approx(-1.0)  # client 2 flips layer 0
    deltas = torch.stack([w1 - WG, w2 - WG])
    slices = layer_slices(SPEC)
    assert ldawa_cosines(WG, deltas, slices).flatten().tolist() == pytest.approx(sum(expected, []), abs=1e-12)
    new = WG + ldawa_combine(WG, deltas, torch.ones(2, dtype=torch.float64), slices)
    hand = [0.5 * (expected[0][0 if i < 6 else 1] * a[i] + expected[1][0 if i < 6 else 1] * b[i]) for i in range(9)]
    assert new.tolist() == pytest.approx(hand, abs=1e-12)
    zeroed = ldawa_cosines(WG, deltas, slices, negative="zero")
    assert zeroed[1, 0] == 0.0 and zeroed[0, 0] == pytest.approx(expected[0][0])


def test_warmup_rounds_are_plain_weighted_means(tiny):
    combine = _combiner(tiny, warmup_rounds=2)
    deltas = torch.randn(3, 9, dtype=torch.float64)
    w = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    ctx = SimpleNamespace(spec=SPEC)
    assert torch.allclose(combine(deltas, w, _state(1), ctx), (w / w.sum()) @ deltas)
    assert not torch.allclose(combine(deltas, w, _state(2), ctx), (w / w.sum()) @ deltas)


def test_ldawa_runs_end_to_end_and_refuses_bad_parameters(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "ldawa", "warmup_rounds": 1}}), out=tmp_path / "ldawa")
    assert res.status == "completed" and torch.isfinite(res.params).all()
    with pytest.raises(fedweave.ConfigError, match="greater than or equal to 0"):
        _combiner(tiny, warmup_rounds=-1)
