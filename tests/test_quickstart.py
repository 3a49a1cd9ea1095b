"""The built-in quickstart (digits, 20 clients, Dirichlet 0.5, MLP, FedAvg) learns."""

from __future__ import annotations

import fedweave


def test_default_quickstart_reaches_085(tmp_path):
    res = fedweave.run(None, out=tmp_path / "qs")
    assert res.summary["status"] == "completed"
    assert res.summary["rounds_completed"] == 30
    assert res.summary["final_accuracy"] >= 0.85


def test_short_quickstart_learns(tmp_path):
    res = fedweave.run(None, out=tmp_path / "qs", overrides=["schedule.rounds=5", "model.hidden=[64]"])
    assert res.summary["status"] == "completed"
    first, last = res.history[0], res.history[-1]
    assert last["accuracy"] > 0.5
    assert last["loss"] < first["loss"]
