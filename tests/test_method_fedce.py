"""FedCE: contributions sum to 1 every round; the gradient- and data-space scores against
hand values; the full-participation refusal; and what happens to a client whose labels are
shuffled (FedCE rewards it as "novel"; leave-one-out ranks it lowest)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fedweave
from fedweave.contributions import leave_one_out
from fedweave.data.federated import build_federated
from fedweave.experiment import _execute, build_experiment
from fedweave.methods.fedce import combine_contributions, leave_others_cosines, minus_model, pearson
from fedweave.rundir import RunDirectory

FULL = {"data": {"partition": {"num_clients": 4}}, "schedule": {"clients_per_round": 4}, "method": {"name": "fedce"}}


def test_contributions_sum_to_one_every_round(tiny, tmp_path):
    res = fedweave.run(tiny({**FULL, "schedule": {"rounds": 4, "clients_per_round": 4}}), out=tmp_path / "ce")
    for record in res.history:
        c = record["fedce_contribution"]
        assert len(c) == 4 and sum(c) == pytest.approx(1.0, abs=1e-12) and min(c) > 0
        assert len(record["fedce_gradient"]) == len(record["fedce_data"]) == 4


def test_gradient_space_cosines_by_hand():
    deltas = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    prior = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    # g = (0.75, 0.5); g_-0 = (0.25, 0.5), g_-1 = (0.75, 0.25), g_-2 = (0.5, 0.25)
    expected = [0.25 / math.hypot(0.25, 0.5), 0.25 / math.hypot(0.75, 0.25), 0.75 / (math.sqrt(2) * math.hypot(0.5, 0.25))]
    assert leave_others_cosines(deltas, prior).tolist() == pytest.approx(expected, abs=1e-12)
    assert leave_others_cosines(torch.zeros(2, 2), torch.tensor([0.5, 0.5])).tolist() == [0.0, 0.0]


def test_combined_contributions_by_hand():
    g, m = torch.tensor([0.2, 0.6, 0.0], dtype=torch.float64), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    gn = [0.2 / 0.801, 0.6 / 0.801, 0.001 / 0.801]  # G clipped at 1e-3 before normalising
    mn = [0.5, 0.25, 0.25]
    raw = [a + b for a, b in zip(gn, mn)]
    assert combine_contributions(g, m).tolist() == pytest.approx([v / sum(raw) for v in raw], abs=1e-12)
    prod = [max(a * b, 1e-3) for a, b in zip(gn, mn)]  # the final normalisation clips too
    assert combine_contributions(g, m, mode="times").tolist() == pytest.approx([v / sum(prod) for v in prod], abs=1e-12)


def test_minus_model_is_the_average_of_the_others_and_is_guarded():
    models = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]])
    c = torch.tensor([0.2, 0.3, 0.5])
    theta = c @ models
    others = (c[1:] / c[1:].sum()) @ models[1:]
    assert torch.allclose(minus_model(theta, models[0], 0.2), others, atol=1e-6)
    assert torch.isfinite(minus_model(theta, models[0], 1.0)).all()  # 1 - c_k = 0 is guarded


@pytest.mark.parametrize("extra, needle", [
    ({"schedule": {"clients_per_round": 3}}, "every client takes part"),
    ({"schedule": {"sampling": "weighted"}}, "every client takes part"),
    ({"data": {"client_val_fraction": 0.0}}, "client_val_fraction"),
])
def test_refuses_partial_participation_and_missing_validation(tiny, tmp_path, extra, needle):
    cfg = tiny(FULL)
    for k, v in extra.items():
        cfg[k] = {**cfg[k], **v}
    with pytest.raises(fedweave.ConfigError, match=needle):
        fedweave.run(cfg, out=tmp_path / "x")


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


NOISY = {"name": "noisy", "seed": 0, "data": {"dataset": "digits", "partition": {"kind": "iid", "num_clients": 4}},
         "schedule": {"rounds": 8, "clients_per_round": 4}, "model": {"name": "mlp", "hidden": [32]},
         "client": {"epochs": 1, "batch_size": 32, "lr": 0.1}, "method": {"name": "fedce"}}


def _with_shuffled_client(cfg, k=0):
    data = build_federated(cfg.data)
    y = data.y.clone()
    idx = torch.cat([data.client_train[k], data.client_val[k]])  # the client's data is noise, validation too
    y[idx] = y[idx][torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))]
    return dataclasses.replace(data, y=y, labels=y)


@pytest.fixture(scope="module")
def noisy_runs(tmp_path_factory):
    cfg = fedweave.load_config(NOISY)
    data = _with_shuffled_client(cfg)
    exp = build_experiment(cfg, data=data)
    run_dir = RunDirectory(tmp_path_factory.mktemp("noisy") / "ce")
    run_dir.create(cfg.to_yaml())
    fedce = _execute(exp, run_dir, None, None).history[-1]
    loo = leave_one_out({**NOISY, "method": {"name": "fedavg"}}, data=data)
    return fedce, loo


def test_shuffled_label_client_is_rewarded_by_fedce_as_novel(noisy_runs):
    """FedCE scores novelty: the noisy client's update points away from the others'
    (G_k highest) and the others' model fails on its (noisy) validation data (M_k highest)."""
    fedce, _ = noisy_runs
    c, g, m = fedce["fedce_contribution"], fedce["fedce_gradient"], fedce["fedce_data"]
    assert max(range(4), key=c.__getitem__) == 0
    assert max(range(4), key=g.__getitem__) == 0 and max(range(4), key=m.__getitem__) == 0


def test_leave_one_out_ranks_the_shuffled_label_client_lowest(noisy_runs):
    _, loo = noisy_runs
    contribution = loo["contribution"]
    assert len(contribution) == 4 and min(range(4), key=contribution.__getitem__) == 0
    assert contribution[0] < 0  # the federation is better without it


@pytest.mark.xfail(strict=True, reason="FedCE's estimates reward a shuffled-label client (see the test above and "
                                       "docs/methods/fedce.md); the expectation that it ends lowest does not hold")
def test_shuffled_label_client_ends_with_the_lowest_fedce_contribution(noisy_runs):
    fedce, _ = noisy_runs
    c = fedce["fedce_contribution"]
    assert min(range(4), key=c.__getitem__) == 0


def test_a_round_missing_a_client_scores_the_present_ones_among_themselves(caplog):
    """4 clients, c uniform (1/4); client 1 sends nothing this round. By hand for the 3
    present, prior renormalised to 1/3: others_k = (Σ_j Δ_j − Δ_k)/3, s_k = cos(Δ_k,
    others_k), G_k = 1 − s_k (the first score), M from the payloads, c = n(n(G) + n(M)) with
    n(v) = max(v, ε)/Σ max(v, ε). The missing client keeps c = 1/4; nothing raises."""
    from types import SimpleNamespace

    from fedweave.core.messages import Update
    from fedweave.core.strategy import ServerState
    from fedweave.methods.fedce import M_KEY, FedCEParams, FedCEWeighting

    weighting = FedCEWeighting(FedCEParams())
    state = ServerState(torch.zeros(2), torch.zeros(0), 0, 0, {})
    ctx = SimpleNamespace(num_clients=4)
    weighting.init(state, ctx)
    deltas = {0: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0]}
    ms = {0: 0.2, 2: 0.5, 3: 0.3}
    updates = [Update(client_id=k, base_version=0, delta=torch.tensor(d, dtype=torch.float64), buffers=torch.zeros(0),
                      num_examples=10, payload={M_KEY: ms[k]}) for k, d in deltas.items()]
    with caplog.at_level("WARNING"):
        c = weighting(updates, state, ctx)
    assert "lacks clients [1]" in caplog.text

    total = [sum(d[i] for d in deltas.values()) for i in range(2)]
    g = []
    for d in deltas.values():
        others = [(total[i] - d[i]) / 3 for i in range(2)]
        cos = (d[0] * others[0] + d[1] * others[1]) / (math.hypot(*d) * math.hypot(*others))
        g.append(max(0.0, 1 - cos))

    def n(v):
        v = [max(x, 1e-3) for x in v]
        return [x / sum(v) for x in v]

    expected = n([a + b for a, b in zip(n(g), n(list(ms.values())))])
    assert c.tolist() == pytest.approx(expected, rel=1e-12)
    assert state.extra["fedce_c"].tolist() == pytest.approx([expected[0], 0.25, expected[1], expected[2]], rel=1e-12)
