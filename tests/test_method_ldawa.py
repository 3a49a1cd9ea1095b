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


def test_method_default_unit_is_the_official_per_tensor_one(tiny):
    combine = _combiner(tiny, warmup_rounds=0)
    combine(torch.zeros(2, 9, dtype=torch.float64), torch.ones(2, dtype=torch.float64), _state(0), SimpleNamespace(spec=SPEC))
    assert combine._slices == [slice(0, 4), slice(4, 6), slice(6, 8), slice(8, 9)]
    combine = _combiner(tiny, warmup_rounds=0, granularity="module")
    combine(torch.zeros(2, 9, dtype=torch.float64), torch.ones(2, dtype=torch.float64), _state(0), SimpleNamespace(spec=SPEC))
    assert combine._slices == [slice(0, 6), slice(6, 9)]


# Two 2-number units; global g = [1, 0 | 0, 2]. Each client unit is a multiple of a unit vector
# at cosine 0.6 with g's unit: (0.6, ±0.8) against (1, 0) and (±0.8, 0.6) against (0, 1).
G2 = torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=torch.float64)
W1 = torch.tensor([1.2, 1.6, 0.8, 0.6], dtype=torch.float64)  # radii 2 and 1
W2 = torch.tensor([0.6, -0.8, -1.6, 1.2], dtype=torch.float64)  # radii 1 and 2
UNITS = [slice(0, 2), slice(2, 4)]
P = torch.tensor([1.0, 3.0], dtype=torch.float64)  # p = (1/4, 3/4)
# weighted mean: 0.25·W1 + 0.75·W2 = [0.3 + 0.45, 0.4 − 0.6, 0.2 − 1.2, 0.15 + 0.9]
MEAN = [0.75, -0.2, -1.0, 1.05]


def test_equal_cosines_shrink_the_weighted_mean_by_c():
    """The official rule does not renormalise Σ p_k δ_k (= c here): the result is c × the
    weighted mean — a deliberate shrink, as the official code (sum / K) does."""
    deltas = torch.stack([W1 - G2, W2 - G2])
    assert ldawa_cosines(G2, deltas, UNITS).flatten().tolist() == pytest.approx([0.6] * 4, abs=1e-12)
    new = G2 + ldawa_combine(G2, deltas, P, UNITS)
    assert new.tolist() == pytest.approx([0.6 * m for m in MEAN], abs=1e-12)


def test_normalized_equal_cosines_give_the_weighted_mean(tiny):
    deltas = torch.stack([W1 - G2, W2 - G2])
    new = G2 + ldawa_combine(G2, deltas, P, UNITS, normalize=True)
    assert new.tolist() == pytest.approx(MEAN, abs=1e-12)
    # through the configured combiner too (per-tensor units of SPEC; cos = 1 is not needed)
    assert _combiner(tiny, normalize=True).normalize is True
    assert _combiner(tiny).normalize is False


def test_normalized_cancelling_cosines_fall_back_to_the_weighted_mean():
    # unit 1: client 1 at cos +1, client 2 at cos −1 with equal weight: Σ p δ = 0
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w = torch.tensor([[2.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    new = g + ldawa_combine(g, w - g, torch.ones(2, dtype=torch.float64), [slice(0, 2)], normalize=True)
    assert new.tolist() == pytest.approx([-0.5, 0.0], abs=1e-12)


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
