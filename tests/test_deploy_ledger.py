"""Simulation and deployment end the same way and evaluate on the same grid: the same
scenario run through ``fedweave.run`` and through a loopback deployment (server and
clients as threads on 127.0.0.1), compared. Both keep their books with one
:class:`~fedweave.sim.ledger.RoundLedger`; these tests are what keeps them from
drifting apart again."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("grpc")

import fedweave  # noqa: E402
from fedweave.deploy.loopback import LoopbackRun  # noqa: E402
from fedweave.sim.engine import Observer  # noqa: E402

pytestmark = pytest.mark.timeout(240)

ROUNDS = 4
EVERY_S = 0.05


def config(**extra) -> dict:
    cfg = {
        "name": "ledger-drift", "seed": 0,
        "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "num_clients": 4, "alpha": 0.5}},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
        "schedule": {"rounds": ROUNDS, "clients_per_round": 4},
    }
    for section, values in extra.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


class RoundEnds(Observer):
    """The clock's reading when each round's aggregation was done (round number -> time)."""

    def __init__(self, clock):
        self.clock, self.ends = clock, {}

    def on_round_end(self, state, round_: int) -> None:
        self.ends[state.round] = self.clock.now()


def grid_semantics(records: list[dict]) -> tuple[list[dict], dict]:
    """Check what a sync run with ``eval.every_s`` must write, whatever its clock: records
    at the grid points k·every_s (k = 1, 2, ... without a gap), each of the model of the
    rounds completed by then (never decreasing), then one record of the final model after
    the last round; nothing else. Returns the grid records and the final one."""
    *grid, final = records
    assert [r["virtual_time_s"] for r in grid] == pytest.approx([k * EVERY_S for k in range(1, len(grid) + 1)])
    assert all(r["version"] == r["round"] for r in records)  # FedAvg: one version per round
    assert [r["round"] for r in grid] == sorted(r["round"] for r in grid)
    assert all(r["round"] < ROUNDS for r in grid)
    assert final["round"] == final["version"] == ROUNDS
    assert not grid or final["virtual_time_s"] >= grid[-1]["virtual_time_s"]
    return grid, final


def test_a_sync_deployment_evaluates_on_the_every_s_grid_as_the_simulation_does(tmp_path):
    cfg = config(eval={"every_s": EVERY_S})
    # the simulation: virtual seconds (a round of this fleet takes ~0.11 s, so ~2 grid points per round)
    sim = fedweave.run(cfg, out=tmp_path / "sim")
    grid_semantics(sim.history)
    # every model of the run is seen by some record: the figures each model version has
    figures = {r["round"]: (r["accuracy"], r["loss"]) for r in sim.history}
    assert sorted(figures) == list(range(ROUNDS + 1))

    # the deployment: wall-clock seconds
    run = LoopbackRun(cfg, out=tmp_path / "deploy", server_kwargs={"min_clients": 4})
    observer = RoundEnds(run.server.clock)
    run.exp.observers.append(observer)
    ends = observer.ends
    run.start_clients()
    result = run.wait(180)
    assert result.status == "completed" and not run.client_errors
    records = run.run_dir.read_metrics()
    grid, final = grid_semantics(records)
    assert grid, "four deployed rounds took less than one grid step"
    assert torch.allclose(result.params, sim.params, atol=1e-6)
    for r in records:  # each record sees the model its round names, as in the simulation
        assert r["accuracy"] == pytest.approx(figures[r["round"]][0], abs=1e-6)
        assert r["loss"] == pytest.approx(figures[r["round"]][1], rel=1e-5)
    # a grid point passed while round j+1 ran sees the model of round j: it lies after
    # round j's end, and no later than the end of the round after (or the final record)
    for r in grid:
        j, t = r["round"], r["virtual_time_s"]
        if j >= 1:
            assert ends[j] < t
        assert t <= (ends[j + 2] if j + 2 <= ROUNDS else final["virtual_time_s"])
    assert final["round_wall_s"] > 0


def test_a_deployment_whose_every_update_of_a_round_is_non_finite_ends_diverged_like_the_simulation(tmp_path):
    """Issue #20: every update of round 1 is NaN (a learning rate of 1e38 overflows the
    first step); the simulation stops with status ``diverged`` and commits nothing of the
    round, and so must the deployment, which also rejects every update it was sent."""
    cfg = config(client={"lr": 1e38})
    sim = fedweave.run(cfg, out=tmp_path / "sim")
    assert sim.summary["status"] == "diverged"
    assert sim.summary["message"] == ("Every update of round 1 was non-finite; lower client.lr or check the method's "
                                      "settings.")

    run = LoopbackRun(cfg, out=tmp_path / "deploy", server_kwargs={"min_clients": 4})
    run.start_clients()
    result = run.wait(180)
    s = result.summary
    for key in ("status", "message", "rounds_completed", "client_updates", "dropped_updates", "late_updates",
                "bytes_up", "bytes_down", "participation"):
        assert s[key] == sim.summary[key], key
    assert not run.client_errors
    assert sum(c.rejected for c in run.clients.values()) == s["rejected_updates"] == 4  # each told why
    assert s["rounds_completed"] == 0 and result.history == sim.history == []
    assert torch.equal(result.params, sim.params)  # the initial model: nothing of the round was committed
