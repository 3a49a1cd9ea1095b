"""q-FFL / q-FedAvg: the server step against its formula with hand values, q = 0 as the
uniform average, and F_k measured on the global model before local training."""

from __future__ import annotations

import pytest
import torch

import fedweave
from fedweave.experiment import build_experiment
from fedweave.methods.base import ClientJob
from fedweave.messages import Broadcast
from fedweave.methods.qffl import LOSS_KEY, qffl_step
from fedweave.sim.worker import Worker

WG = [1.0, -1.0]
DELTAS = [[0.2, 0.0], [-0.1, 0.3]]
LOSSES = [0.5, 2.0]
LR = 0.1


def hand_step(q: float) -> list[float]:
    big_l = 1.0 / LR
    dws = [[-big_l * d for d in row] for row in DELTAS]
    f = [v + 1e-10 for v in LOSSES]
    h = [q * fk ** (q - 1) * sum(x * x for x in dw) + big_l * fk**q for fk, dw in zip(f, dws)]
    num = [sum(fk**q * dw[i] for fk, dw in zip(f, dws)) for i in range(2)]
    return [WG[i] - num[i] / sum(h) for i in range(2)]


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, 5.0])
def test_step_matches_the_formula(q):
    out = qffl_step(torch.tensor(WG, dtype=torch.float64), torch.tensor(DELTAS, dtype=torch.float64),
                    torch.tensor(LOSSES), q, LR)
    assert out.tolist() == pytest.approx(hand_step(q), rel=1e-12, abs=1e-12)


def test_q1_by_hand():
    # L = 10; Δw_1 = (-2, 0), Δw_2 = (1, -3); h_1 = 4 + 5, h_2 = 10 + 20 (F + 1e-10 ignored here)
    # w_g - (0.5 (-2, 0) + 2 (1, -3)) / 39 = (1 - 1/39, -1 + 6/39)
    out = qffl_step(torch.tensor(WG, dtype=torch.float64), torch.tensor(DELTAS, dtype=torch.float64),
                    torch.tensor(LOSSES), 1.0, LR)
    assert out.tolist() == pytest.approx([1 - 1 / 39, -1 + 6 / 39], rel=1e-8)


def test_q0_is_the_uniform_average_of_client_models():
    out = qffl_step(torch.tensor(WG, dtype=torch.float64), torch.tensor(DELTAS, dtype=torch.float64),
                    torch.tensor(LOSSES), 0.0, LR)
    assert out.tolist() == pytest.approx([WG[0] + 0.05, WG[1] + 0.15], abs=1e-12)


def test_client_reports_the_global_model_loss_before_training(tiny):
    exp = build_experiment(fedweave.load_config(tiny({"method": {"name": "qffl", "q": 2}})))
    worker = Worker(exp.worker_setup())
    job = ClientJob(1, 0, 0, Broadcast(0, exp.initial_params, exp.initial_buffers), None, exp.train_settings(0.1))
    result = worker.run(job)
    idx = exp.data.client_train[1]
    worker.model.params.copy_(exp.initial_params)
    expected = exp.task.evaluate(worker.model.module, exp.data.x[idx], exp.data.y[idx])["loss"]
    assert result.update.payload[LOSS_KEY] == pytest.approx(expected, rel=1e-6)
    assert result.update.metrics["loss"] != pytest.approx(expected)  # not the training loss


def test_runs_end_to_end_and_refuses_negative_q(tiny, tmp_path, monkeypatch):
    """The reported step scale is Σ_k a_k recomputed here from the round's deltas and losses
    (a_k = L F_k^q / Σ_j h_j, h_j = q F_j^(q-1) L² ‖Δ_j‖² + L F_j^q), and each global model is
    w_g + Σ_k a_k Δ_k. For q > 0 every h_j exceeds L F_j^q, so Σ_k a_k < 1."""
    from fedweave.methods.qffl import QFFLStrategy

    rounds = []
    aggregate = QFFLStrategy.aggregate

    def spy(self, updates, state, ctx):
        before = state.params.clone()
        new = aggregate(self, updates, state, ctx)
        rounds.append((before, [u.delta.double() for u in updates], [float(u.payload[LOSS_KEY]) for u in updates],
                       ctx.round_lr, new.params.clone()))
        return new

    monkeypatch.setattr(QFFLStrategy, "aggregate", spy)
    res = fedweave.run(tiny({"method": {"name": "qffl", "q": 1.0}}), out=tmp_path / "q")
    assert res.status == "completed" and len(rounds) == len(res.history) == 3
    for (before, deltas, losses, lr, after), rec in zip(rounds, res.history):
        big_l, f = 1.0 / lr, [v + 1e-10 for v in losses]
        h = sum(1.0 * fk ** 0 * big_l**2 * float(d.pow(2).sum()) + big_l * fk for fk, d in zip(f, deltas))
        a = [big_l * fk / h for fk in f]
        assert rec["qffl_step_scale"] == pytest.approx(sum(a), rel=1e-9)
        assert 0 < sum(a) < 1  # shorter steps than averaging
        expected = before.double() + sum(ak * d for ak, d in zip(a, deltas))
        assert torch.allclose(after.double(), expected, rtol=0, atol=1e-6)
    with pytest.raises(fedweave.ConfigError, match="greater than or equal to 0"):
        fedweave.run(tiny({"method": {"name": "qffl", "q": -1}}), out=tmp_path / "bad")


def test_records_the_mean_local_steps_of_the_round(tiny, tmp_path):
    import math

    cfg = tiny({"method": {"name": "qffl"}, "client": {"epochs": 2, "batch_size": 16}, "schedule": {"clients_per_round": 5}})
    res = fedweave.run(cfg, out=tmp_path / "q")
    exp = fedweave.build_experiment(fedweave.load_config(cfg))
    # every client takes part in every round: the mean over clients of epochs · ⌈n_k / batch⌉
    sizes = [len(i) for i in exp.data.client_train]
    expected = sum(2 * math.ceil(n / 16) for n in sizes) / len(sizes)
    assert all(r["qffl_mean_local_steps"] == pytest.approx(expected) for r in res.history if "qffl_mean_local_steps" in r)
    assert any("qffl_mean_local_steps" in r for r in res.history)
