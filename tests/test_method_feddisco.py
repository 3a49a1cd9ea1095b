"""FedDisco: weights against hand-computed values, the all-zero fallback, and the stage
plugged into other presets (FedProx, FedAdam) with the histogram counted in bytes."""

from __future__ import annotations

import math

import pytest
import torch

import fedweave
from fedweave.errors import ConfigError
from fedweave.messages import Update
from fedweave.methods import build_method
from fedweave.methods.feddisco import HIST_KEY, disco_weights, discrepancy
from fedweave.methods.stages import WithStageClients

SIZES = torch.tensor([100.0, 300.0, 100.0])  # n = 0.2, 0.6, 0.2
HISTS = torch.tensor([
    [10.0] * 10,                        # uniform: KL 0
    [150.0, 150.0] + [0.0] * 8,         # two classes: KL = log 5
    [25.0] * 4 + [0.0] * 6,             # four classes: KL = log 2.5
])


def test_kl_weights_match_hand_computation():
    kl = [0.0, math.log(5), math.log(2.5)]
    d = [v / sum(kl) for v in kl]
    n = [0.2, 0.6, 0.2]
    raw = [max(0.0, nk - 0.5 * dk + 0.1) for nk, dk in zip(n, d)]
    expected = [r / sum(raw) for r in raw]
    assert discrepancy(HISTS, "kl").tolist() == pytest.approx(kl, abs=1e-12)
    assert disco_weights(SIZES, HISTS).tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[0] > 0.2  # the balanced client gains weight over its size share


@pytest.mark.parametrize("metric, raw", [("l1", [0.0, 1.6, 1.2]), ("l2", [0.0, math.sqrt(2 * 0.4**2 + 8 * 0.1**2),
                                                                              math.sqrt(4 * 0.15**2 + 6 * 0.1**2)])])
def test_l1_l2_are_normalised_over_the_cohort_too(metric, raw):
    d = [v / sum(raw) for v in raw]
    a, b = 0.3, 0.05
    w = [max(0.0, nk - a * dk + b) for nk, dk in zip([0.2, 0.6, 0.2], d)]
    assert discrepancy(HISTS, metric).tolist() == pytest.approx(raw, abs=1e-12)
    assert disco_weights(SIZES, HISTS, a, b, metric).tolist() == pytest.approx([v / sum(w) for v in w], abs=1e-12)


def test_all_zero_weights_fall_back_to_size_shares():
    w = disco_weights(SIZES, HISTS, a=5.0, b=-0.7)  # every n_k - a d_k + b <= 0
    assert w.tolist() == pytest.approx([0.2, 0.6, 0.2], abs=1e-12)


def test_identical_histograms_give_zero_discrepancy():
    hists = torch.tensor([[5.0, 5.0], [50.0, 50.0]])
    w = disco_weights(torch.tensor([1.0, 3.0]), hists, a=0.5, b=0.1)
    assert w.tolist() == pytest.approx([0.35 / 1.2, 0.85 / 1.2], abs=1e-12)


def _cfg(tiny, **method):
    return tiny({"method": {"name": "feddisco", **method}})


def test_stage_reads_histograms_from_uploads(tiny):
    strategy, client = build_method(fedweave.load_config(_cfg(tiny, a=0.5, b=0.1)))
    assert isinstance(client, WithStageClients)
    ups = [Update(k, 0, torch.zeros(3), None, int(SIZES[k]), payload={HIST_KEY: HISTS[k]}) for k in range(3)]
    assert strategy.weighting(ups, None, None).tolist() == pytest.approx(disco_weights(SIZES, HISTS).tolist())
    with pytest.raises(ConfigError, match="label histogram"):
        strategy.weighting([Update(0, 0, torch.zeros(3), None, 10)], None, None)


@pytest.mark.parametrize("bad, needle", [({"a": -0.1}, "greater than or equal to 0"), ({"metric": "cos"}, "kl"),
                                         ({"c": 1}, "unknown parameter")])
def test_invalid_parameters_are_refused_with_the_allowed_range(tiny, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        build_method(fedweave.load_config(_cfg(tiny, **bad)))


def test_disco_plugs_into_fedprox_and_server_optimizers_and_counts_histogram_bytes(tiny, tmp_path):
    base = tiny({"method": {"name": "fedprox"}})
    plain = fedweave.run(base, out=tmp_path / "prox")
    disco = fedweave.run(tiny({"method": {"name": "fedprox", "weighting": "disco", "a": 0.8, "metric": "l1"}}),
                         out=tmp_path / "prox-disco")
    adam = fedweave.run(tiny({"method": {"name": "fedadam", "weighting": "disco"}}), out=tmp_path / "adam-disco")
    uploads = plain.summary["client_updates"]
    assert disco.summary["bytes_up"] - plain.summary["bytes_up"] == uploads * 10 * 4  # 10 float32 counts each
    assert disco.status == adam.status == "completed"
    assert not torch.equal(disco.params, plain.params)
