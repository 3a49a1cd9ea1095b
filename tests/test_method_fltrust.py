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


def test_fltrust_gives_sign_flippers_zero_trust(tiny, tmp_path, monkeypatch):
    """A problem where it must: iid clients and a root set from the same distribution start
    from the same model, so every honest update and the server's root update g0 descend the
    same expected loss and point the same way (cos > 0: positive trust). A sign-flipper
    uploads -3x its honest update, whose cosine with g0 is then negative: ReLU gives 0."""
    from fedweave.methods import fltrust as fltrust_module
    from fedweave.threats.attacks import malicious_clients

    seen = []  # per round: (client ids, trust scores, cosines recomputed here)
    combine, aggregate = fltrust_module.fltrust_combine, fltrust_module.FLTrustStrategy.aggregate

    def spy_combine(deltas, g0):
        out, trust = combine(deltas, g0)
        seen[-1] += [trust, torch.nn.functional.cosine_similarity(deltas, g0[None, :], dim=1)]
        return out, trust

    def spy_aggregate(self, updates, state, ctx):
        seen.append([[u.client_id for u in updates]])
        return aggregate(self, updates, state, ctx)

    monkeypatch.setattr(fltrust_module, "fltrust_combine", spy_combine)
    monkeypatch.setattr(fltrust_module.FLTrustStrategy, "aggregate", spy_aggregate)
    res = fedweave.run(tiny({"method": {"name": "fltrust"}, "data": {"server_fraction": 0.05, "partition": {"kind": "iid"}},
                             "attack": {"kind": "sign_flip", "fraction": 0.4, "scale": 3.0},
                             "schedule": {"clients_per_round": 5, "rounds": 3}}), out=tmp_path / "f")
    assert res.status == "completed"
    bad = set(malicious_clients(0, 5, 0.4))
    assert len(seen) == 3 and len(bad) == 2
    for (ids, trust, cos), rec in zip(seen, res.history):
        assert torch.allclose(trust, cos.clamp_min(0), atol=1e-6)  # TS_i = ReLU(cos(Δ_i, g0))
        for cid, t in zip(ids, trust.tolist()):
            assert (t == 0.0) if cid in bad else (t > 0.0), (cid, t)
        assert rec["fltrust_mean_trust"] == pytest.approx(float(trust.mean()))
