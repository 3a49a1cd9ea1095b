"""Same config + seed ⇒ same numbers, for the three seed-paper systems (one tiny run twice each)."""

from __future__ import annotations

import pytest
import torch

import fedweave

SYSTEMS = {
    "fsar_gcn": {
        "data": {"dataset": "skeleton:2", "partition": {"kind": "natural", "num_clients": 2}},
        "model": {"name": "stgcn", "width": 4},
        "method": {"name": "fsar_gcn"},
    },
    "fedvsr-video": {
        "task": {"kind": "video_sr"},
        "data": {"dataset": "clips:3", "partition": {"kind": "iid", "num_clients": 2}},
        "model": {"name": "vsrnet", "width": 4, "kwargs": {"depth": 2}},
        "method": {"name": "fedvsr"},
    },
    "plora-dynamic": {
        "data": {"dataset": "shapesvqa:2", "partition": {"kind": "natural", "num_clients": 2},
                 "client_val_fraction": 0.2},
        "model": {"name": "vlm", "width": 8, "kwargs": {"n_layers": 1}},
        "method": {"name": "plora", "rank": 2, "alpha": 4, "dynamic": True},
        "eval": {"personalized": True},
    },
}


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_two_runs_give_the_same_numbers(name, tiny, tmp_path):
    cfg = tiny({**SYSTEMS[name], "schedule": {"rounds": 2, "clients_per_round": 2},
                "client": {"epochs": 1, "batch_size": 32, "lr": 0.003, "optimizer": "adam"}})
    first = fedweave.run(cfg, out=tmp_path / "a")
    second = fedweave.run(cfg, out=tmp_path / "b")
    assert first.status == second.status == "completed"
    assert torch.equal(first.params, second.params)
    def without_wall_time(history):
        return [{k: v for k, v in h.items() if "wall" not in k} for h in history]

    assert without_wall_time(first.history) == without_wall_time(second.history)
    assert len(first.history) == 2
