"""FLIP: trigger stamping, hardening, inversion, and the rejection rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fedweave
import torch.nn.functional as F

from fedweave.methods.flip import FLIPParams, harden_batch, invert_trigger, mask_shape, reject, stamp
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
    cfg = tiny({"method": {"name": "flip", "inversion_steps": 5, "first_inversion_steps": 5},
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


# -- the official inversion budget and fallback -------------------------------------------------


def test_defaults_are_the_official_budget():
    p = FLIPParams()
    assert (p.first_inversion_steps, p.inversion_steps, p.patience, p.inversion_fallback) == (400, 200, 10, "zero")
    assert p.threshold == 0.4 and p.asr_threshold == 0.9 and p.init_cost == 1e-3


def _mnist_like(n=1000, seed=0):
    """MNIST-shaped data built here (28×28 in [0, 1], dark border like MNIST digits): each class
    is a fixed random stroke pattern in the central 20×20 region, with per-example intensity
    and speckle noise. Loading the real MNIST-5k takes ~15 s; the slow test below uses it."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.zeros(10, 1, 28, 28)
    protos[:, :, 4:24, 4:24] = (torch.rand(10, 1, 20, 20, generator=g) > 0.6).float()
    y = torch.arange(n) % 10
    x = protos[y] * (0.6 + 0.4 * torch.rand(n, 1, 28, 28, generator=g))
    x[:, :, 4:24, 4:24] += 0.3 * torch.rand(n, 1, 20, 20, generator=g) * (torch.rand(n, 1, 20, 20, generator=g) > 0.7)
    return x.clamp(0, 1), y


CORNER = (slice(23, 27), slice(23, 27))  # the planted 4×4 trigger, one pixel from the bottom-right corner


def _backdoored_linear_model(x, y, target=0, steps=60):
    """A softmax-linear model trained on data where 10 % of the examples carry the white 4×4
    corner square and the label ``target`` (BadNets)."""
    g = torch.Generator().manual_seed(1)
    poisoned = torch.randperm(len(y), generator=g)[: len(y) // 10]
    xp, yp = x.clone(), y.clone()
    xp[poisoned, :, CORNER[0], CORNER[1]] = 1.0
    yp[poisoned] = target
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(xp), yp).backward()
        opt.step()
    return model


def _check_inverted_mask(model, x, y, target=0):
    stamped = x[y != target].clone()
    stamped[:, :, CORNER[0], CORNER[1]] = 1.0
    with torch.no_grad():
        assert (model(stamped).argmax(1) == target).float().mean() > 0.9  # the backdoor is there
    sel = torch.nonzero(y != target).flatten()[:64]
    mask, pattern = invert_trigger(model, x[sel], target, generator=torch.Generator().manual_seed(2))  # defaults
    area = 16.0  # the trigger's 4×4 pixels
    l1 = float(mask.sum())
    assert 0.25 * area <= l1 <= 3 * area  # about the trigger's size, not a quarter of the image (196)
    # the mass sits in the trigger's corner: the 7×7 bottom-right block holding the square
    assert float(mask[0, 21:28, 21:28].sum()) >= 0.8 * l1
    with torch.no_grad():
        assert (model(stamp(x[sel], mask, pattern)).argmax(1) == target).float().mean() >= 0.9


def test_default_inversion_recovers_a_planted_corner_trigger(one_thread):
    x, y = _mnist_like()
    _check_inverted_mask(_backdoored_linear_model(x, y), x, y)


@pytest.mark.slow
def test_default_inversion_recovers_a_planted_corner_trigger_on_mnist5k(one_thread):
    from fedweave.data.sources import _load_mnist5k

    src = _load_mnist5k()
    x, y = src.x_train.float(), src.y_train.long()
    _check_inverted_mask(_backdoored_linear_model(x, y, steps=150), x, y)


def test_a_failed_inversion_stamps_nothing():
    # the target's logit is far below the others whatever the input: success 0.9 is unreachable
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, -1e4]))
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(8, dtype=torch.long)
    mask, pattern = invert_trigger(model, x, target=2, steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, torch.zeros(1, 4, 4)) and torch.equal(stamp(x, mask, pattern), x)
    hardened = harden_batch(x, y, mask[None], pattern[None], torch.tensor([2]), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(hardened, x)
    # the former best-effort fallback keeps the last iterate instead
    mask_be, _ = invert_trigger(model, x, target=2, steps=20, generator=torch.Generator().manual_seed(0), fallback="best_effort")
    assert mask_be.sum() > 0


def test_first_job_inverts_every_label_with_the_warmup_budget(tiny, monkeypatch):
    import fedweave.methods.flip as flip
    from fedweave.config import load_config
    from fedweave.experiment import build_experiment
    from fedweave.methods.base import ClientJob
    from fedweave.messages import Broadcast
    from fedweave.sim.worker import Worker

    calls = []

    def fake(module, x, target, steps, *args, **kwargs):
        calls.append((target, steps))
        return torch.zeros(mask_shape(tuple(x.shape[1:]))), torch.zeros(tuple(x.shape[1:]))

    monkeypatch.setattr(flip, "invert_trigger", fake)
    exp = build_experiment(load_config(tiny({"method": {"name": "flip", "first_inversion_steps": 7, "inversion_steps": 3,
                                                         "targets_per_round": 2}})))
    worker = Worker(exp.worker_setup())
    C = exp.data.num_classes

    def job(state, counter):
        return ClientJob(0, 0, counter, Broadcast(0, exp.initial_params, exp.initial_buffers), state, exp.train_settings(0.05))

    out = worker.run(job(None, 0))
    present = sorted(set(exp.data.y[exp.data.client_train[0]].tolist()))
    assert calls == [(t, 7) for t in range(C) if [c for c in present if c != t]]
    calls.clear()
    out2 = worker.run(job(out.state, 1))
    assert calls == [(0, 3), (1, 3)]  # later jobs: targets_per_round labels, round-robin, at inversion_steps
    calls.clear()
    worker.run(job(out2.state, 2))
    assert calls == [(2, 3), (3, 3)]


def test_rejection_rule_applies_to_any_method(tiny, tmp_path):
    cfg = tiny({"method": {"name": "fedavg"}, "eval": {"reject_threshold": 0.4},
                "attack": {"kind": "backdoor", "fraction": 0.4, "trigger": {"size": 2}},
                "schedule": {"rounds": 2, "clients_per_round": 5}})
    res = fedweave.run(cfg, out=tmp_path / "fedavg-tau")
    rec = res.history[-1]
    assert {"accuracy_with_rejection", "rejection_rate", "attack_success_rate", "attack_success_rate_no_rejection"} <= set(rec)
    assert rec["accuracy_with_rejection"] <= rec["accuracy"]
    assert rec["attack_success_rate"] <= rec["attack_success_rate_no_rejection"]
    plain = fedweave.run({**cfg, "eval": {}}, out=tmp_path / "fedavg")
    assert "rejection_rate" not in plain.history[-1]
    assert plain.history[-1]["accuracy"] == rec["accuracy"]  # the rule only changes what is reported
    with pytest.raises(fedweave.ConfigError, match="method.threshold"):
        fedweave.run(tiny({"method": {"name": "flip"}, "eval": {"reject_threshold": 0.4}}), out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
