"""FRL: the vote on hand-made rankings, deterministic ties, supermask layers, bytes."""

from __future__ import annotations

import math

import pytest
import torch

import fedweave
from fedweave.methods.frl import (
    RankUpdate, SupermaskLinear, frl_vote, permutation_bytes, rank_positions, reversed_aggregate_ranking, top_k_mask,
)


def test_rank_positions():
    # ranking = edge ids by increasing score: edge 2 lowest, then 0, then 1
    assert rank_positions(torch.tensor([[2, 0, 1]])).tolist() == [[1, 2, 0]]


def test_vote_on_hand_made_rankings():
    rankings = torch.tensor([[0, 1, 2, 3],   # positions 0,1,2,3
                             [1, 0, 2, 3],   # positions 1,0,2,3
                             [3, 2, 1, 0]])  # positions 3,2,1,0
    # votes: edge0 = 0+1+3 = 4, edge1 = 1+0+2 = 3, edge2 = 2+2+1 = 5, edge3 = 3+3+0 = 6
    values = torch.tensor([-2.0, -1.0, 0.5, 3.0])  # the layer's sorted initial scores
    assert frl_vote(rankings, values).tolist() == [-1.0, -2.0, 0.5, 3.0]


def test_vote_ties_go_to_the_lower_edge_id():
    rankings = torch.tensor([[0, 1, 2], [2, 1, 0]])  # votes 2, 2, 2: all tied
    assert frl_vote(rankings, torch.tensor([1.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 3.0]
    rankings = torch.tensor([[1, 0, 2], [0, 1, 2]])  # votes 1, 1, 4
    assert frl_vote(rankings, torch.tensor([1.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 3.0]


def test_reversed_aggregate_ranking():
    ups = [RankUpdate(0, 0, None, None, 1, payload={"ranking": [torch.tensor([0, 1, 2])]}),
           RankUpdate(1, 0, None, None, 1, payload={"ranking": [torch.tensor([0, 2, 1])]})]
    # votes: 0, 3, 3 -> reverse order (most voted first, ties to the lower id): 1, 2, 0
    assert reversed_aggregate_ranking(ups)[0].tolist() == [1, 2, 0]


def test_top_k_mask_and_straight_through():
    s = torch.tensor([[0.3, -1.0], [2.0, 0.1]], requires_grad=True)
    m = top_k_mask(s, 0.5)
    assert m.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    (m * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    assert s.grad.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_supermask_layer_has_frozen_signed_constants():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3)
    sm = SupermaskLinear(lin, 0.5)
    assert not sm.weight.requires_grad and sm.scores.requires_grad
    assert torch.allclose(sm.weight.abs(), torch.full((3, 8), math.sqrt(2 / 8)))
    assert torch.equal(sm.weight.sign(), lin.weight.sign())


def test_permutation_bytes():
    assert permutation_bytes(256) == 256  # 8 bits each
    assert permutation_bytes(1000) == math.ceil(1000 * 10 / 8)


def test_frl_run_keeps_a_permutation_of_the_initial_scores(tiny, tmp_path):
    from fedweave.experiment import build_experiment
    from fedweave.config import load_config

    cfg = tiny({"method": {"name": "frl"}, "client": {"lr": 0.4, "momentum": 0.9}})
    exp = build_experiment(load_config(cfg))
    res = fedweave.run(cfg, out=tmp_path / "frl")
    assert res.status == "completed"
    for _, sl in exp.spec.layers():
        assert torch.equal(res.params[sl].sort().values, exp.initial_params[sl].sort().values)
    sizes = [sl.stop - sl.start for _, sl in exp.spec.layers()]
    per_upload = sum(permutation_bytes(n) for n in sizes) + 8 * 5  # 4 scalars + the loss
    assert res.summary["bytes_up"] == per_upload * res.summary["client_updates"]
    assert res.summary["bytes_up"] < 4 * exp.spec.num_params * res.summary["client_updates"]


def test_frl_under_reversed_rankings_runs(tiny, tmp_path):
    res = fedweave.run(tiny({"method": {"name": "frl"}, "attack": {"kind": "sign_flip", "fraction": 0.4},
                             "client": {"lr": 0.4}}), out=tmp_path / "a")
    assert res.status == "completed"
    with pytest.raises(fedweave.ConfigError, match="rankings"):
        fedweave.run(tiny({"method": {"name": "frl"}, "attack": {"kind": "alie", "fraction": 0.4}}), out=tmp_path / "b")
