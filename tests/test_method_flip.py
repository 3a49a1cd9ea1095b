"""FLIP: trigger stamping, hardening, inversion, and the rejection rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fedweave
from fedweave.methods.flip import harden_batch, invert_trigger, mask_shape, reject, stamp
from fedweave.threats.metrics import success_rate


def test_stamp_is_convex_combination():
    x = torch.full((2, 1, 3, 3), 0.2)
    m = torch.zeros(1, 3, 3)
    m[0, 0, 0] = 1.0
    m[0, 1, 1] = 0.5
    p = torch.ones(1, 3, 3)
    out = stamp(x, m, p)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 1, 1] == pytest.approx(0.6) and out[0, 0, 2, 2] == pytest.approx(0.2)
    assert mask_shape((3, 8, 8)) == (1, 8, 8) and mask_shape((40,)) == (40,)


def test_rejection_rule():
    logits = torch.log(torch.tensor([[0.39, 0.31, 0.30], [0.41, 0.3, 0.29], [0.9, 0.05, 0.05]]))
    assert reject(logits, 0.4).tolist() == [True, False, False]
    # a rejected prediction of the target is not a successful attack
    assert success_rate(nn.Identity(), logits, target=0, threshold=0.4) == pytest.approx(2 / 3)
    assert success_rate(nn.Identity(), logits, target=0) == 1.0


def test_hardening_keeps_labels_and_skips_the_triggers_target():
    x = torch.zeros(2000, 1, 2, 2)
    y = torch.arange(2000) % 2
    masks = torch.ones(1, 1, 2, 2)
    patterns = torch.ones(1, 1, 2, 2)
    out = harden_batch(x, y, masks, patterns, torch.tensor([1]), 0.5, torch.Generator().manual_seed(0))
    stamped = out.flatten(1).any(1)
    assert not stamped[y == 1].any()  # the trigger's own target label is never stamped
    assert stamped[y == 0].float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.equal(x, torch.zeros_like(x))  # input untouched


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation
    yield
    torch.set_num_threads(before)


def test_inversion_finds_a_small_trigger_for_a_planted_backdoor(one_thread):
    # a linear model that answers class 1 as soon as pixel (0, 0) is bright
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
        model[1].weight[1, 0] = 10.0
    x = torch.rand(32, 1, 4, 4) * 0.05
    mask, pattern = invert_trigger(model, x, target=1, steps=150, lr=0.1, generator=torch.Generator().manual_seed(0))
    hit = (model(stamp(x, mask, pattern)).argmax(1) == 1).float().mean()
    assert hit >= 0.9
    assert int(mask.flatten().argmax()) == 0 and mask.sum() < 1.0  # concentrated on the planted pixel
    assert all(p.grad is None for p in model.parameters())


def test_flip_run_keeps_trigger_state_and_reports_rejection(tiny, tmp_path):
    cfg = tiny({"method": {"name": "flip", "inversion_steps": 5},
                "attack": {"kind": "backdoor", "fraction": 0.4, "trigger": {"size": 2}},
                "schedule": {"rounds": 2, "clients_per_round": 5}})
    res = fedweave.run(cfg, out=tmp_path / "flip")
    rec = res.history[-1]
    assert {"accuracy_with_rejection", "rejection_rate", "attack_success_rate"} <= set(rec)
    assert rec["accuracy_with_rejection"] <= rec["accuracy"]
    from fedweave.config import load_config
    from fedweave.experiment import build_experiment
    from fedweave.methods.flip import FLIPClient

    exp = build_experiment(load_config(cfg))
    inner = exp.algorithm.inner
    assert isinstance(inner, FLIPClient) and type(exp.algorithm.attacker) is not FLIPClient  # attackers skip FLIP
