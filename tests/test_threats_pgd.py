"""PGD adversarial examples and the robust-accuracy metric."""

from __future__ import annotations

import torch
from torch import nn

import fedweave
from fedweave.threats.pgd import pgd_attack, robust_accuracy


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_pgd_stays_in_the_ball_and_the_data_range():
    m = _model()
    x = torch.rand(32, 1, 4, 4)
    y = torch.randint(0, 3, (32,))
    adv = pgd_attack(m, x, y, eps=0.1, steps=5, lo=0.0, hi=1.0, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    loss = nn.functional.cross_entropy
    assert loss(m(adv), y) > loss(m(x), y)
    assert all(p.grad is None for p in m.parameters())  # no parameter gradient accumulates


def test_robust_accuracy_is_at_most_clean_and_zero_eps_is_clean():
    m = _model()
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    clean = float((m(x).argmax(1) == y).float().mean())
    assert robust_accuracy(m, x, y, eps=0.2, steps=5, lo=0, hi=1) <= clean
    assert robust_accuracy(m, x, y, eps=1e-9, steps=1, lo=0, hi=1) == clean


def test_robust_accuracy_in_records(tiny, tmp_path):
    res = fedweave.run(tiny({"eval": {"robust_accuracy": True, "robust_max_examples": 50, "robust_steps": 2}}), out=tmp_path / "r")
    assert all(0 <= r["robust_accuracy"] <= 1 for r in res.history)
    assert res.summary["final_robust_accuracy"] == res.history[-1]["robust_accuracy"]
