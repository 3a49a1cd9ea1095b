"""The round ledger on its own, driven by hand as the engine and the server drive it:
admission counts, staleness at and beyond ``max_staleness`` (async and buffered),
divergence, the evaluation grid, the learning-rate schedule. Expected values are worked
out by hand from the config (digits: 64 inputs, 10 classes; mlp [16])."""

from __future__ import annotations

import pytest
import torch

from fedweave import build_experiment, load_config
from fedweave.errors import DivergedError
from fedweave.messages import Update
from fedweave.methods.base import ServerState
from fedweave.rundir import RunDirectory
from fedweave.sim.events import VirtualClock
from fedweave.sim.ledger import DROPPED, HELD, MERGED, RoundLedger

P = (64 * 16 + 16) + (16 * 10 + 10)  # trainable parameters of mlp [16] on digits
BROADCAST_BYTES = 4 * P + 8  # float32 vector + the version
UPDATE_BYTES = 4 * P + 8 * 5  # float32 delta + id, base version, examples, steps + one metric (loss)


def make_ledger(tiny, tmp_path, extra: dict | None = None) -> RoundLedger:
    exp = build_experiment(load_config(tiny(extra or {})))
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.create(exp.config.to_yaml())
    ledger = RoundLedger(exp, run_dir, VirtualClock())
    ledger.start()
    return ledger


def update(cid: int, base: int, value: float = 0.01, loss: float = 1.0) -> Update:
    return Update(cid, base, torch.full((P,), value), torch.zeros(0), 10, 1, {"loss": loss})


def test_sync_admission_counts_and_a_commit(tiny, tmp_path):
    ledger = make_ledger(tiny, tmp_path)  # 5 clients, 3 per round, 3 rounds
    initial = ledger.committed.state.params.clone()
    book = ledger.open_round(0, None)
    assert len(book.selected) == book.keep == 3
    assert book.totals.bytes_down == 3 * BROADCAST_BYTES
    a, b, c = book.selected
    ups = [update(a, 0), update(b, 0, float("nan")), update(c, 0)]
    for u in ups:
        ledger.arrive(book, u)
    assert ledger.admit(book, ups[0], True) is True
    assert ledger.admit(book, ups[1], True) is False  # non-finite
    assert ledger.admit(book, ups[2], False) is False  # the driver's verdict: offline / malformed
    assert ledger.admit(book, None, False) is False  # a stream that broke off: dropped, not an arrival
    t = book.totals
    assert (t.arrivals, t.client_updates, t.dropped_updates, book.nonfinite) == (3, 1, 3, 1)
    assert t.bytes_up == 3 * UPDATE_BYTES
    assert [int(v) for v in book.participation] == [1 if i == a else 0 for i in range(5)]

    new_state = ledger.aggregate_round(book)
    # FedAvg of one update is that update; the committed state is untouched until the commit
    assert torch.allclose(new_state.params, initial + 0.01) and new_state.version == 1
    assert torch.equal(ledger.committed.state.params, initial) and ledger.committed.round == 0
    record = ledger.commit_round(book, new_state, {"note": 7})
    c = ledger.committed
    assert c.round == 1 and c.state.version == 1 and c.totals.client_updates == 1 and c.totals.dropped_updates == 3
    assert [int(v) for v in c.counters] == [1 if i in book.selected else 0 for i in range(5)]
    assert record["round"] == 1 and record["client_updates"] == 1 and record["note"] == 7
    assert record["train_loss"] == 1.0
    assert ledger.run_dir.read_metrics()[-1]["dropped_updates"] == 3


def test_a_round_of_only_non_finite_updates_diverges_and_commits_nothing(tiny, tmp_path):
    ledger = make_ledger(tiny, tmp_path)
    book = ledger.open_round(0, None)
    for cid in book.selected[:2]:
        u = update(cid, 0, float("inf"))
        ledger.arrive(book, u)
        ledger.admit(book, u, True)
    with pytest.raises(DivergedError, match="Every update of round 1 was non-finite"):
        ledger.aggregate_round(book)
    assert ledger.committed.round == 0 and ledger.committed.totals.arrivals == 0


def test_a_round_with_a_non_finite_and_an_invalid_update_is_not_divergence(tiny, tmp_path):
    """Divergence needs *every* arrival non-finite: one offline (invalid) arrival beside a
    NaN one is an empty round, which commits the unchanged model."""
    ledger = make_ledger(tiny, tmp_path)
    book = ledger.open_round(0, None)
    a, b, _ = book.selected
    for u, valid in ((update(a, 0, float("nan")), True), (update(b, 0), False)):
        ledger.arrive(book, u)
        ledger.admit(book, u, valid)
    new_state = ledger.aggregate_round(book)
    assert book.aggregated == 0 and new_state.version == 0
    ledger.commit_round(book, new_state)
    assert ledger.committed.round == 1 and ledger.committed.totals.dropped_updates == 2


def test_a_non_finite_global_model_is_divergence():
    state = ServerState(torch.tensor([1.0, float("nan")]), torch.zeros(0))
    with pytest.raises(DivergedError, match="non-finite at round 3"):
        RoundLedger.check_finite(state, "round 3")
    RoundLedger.check_finite(ServerState(torch.ones(2), torch.zeros(0)), "round 3")  # finite: nothing


def test_async_staleness_at_max_staleness_is_merged_and_above_it_dropped(tiny, tmp_path):
    ledger = make_ledger(tiny, tmp_path, {"method": {"name": "fedasync"},
                                          "schedule": {"mode": "async", "max_staleness": 1}})
    live = ledger.begin_async()
    assert ledger.admit_async(live, update(0, 0), True) == MERGED  # τ = 0
    assert ledger.admit_async(live, update(1, 0), True) == MERGED  # τ = 1 = max_staleness
    assert live.state.extra["alpha_t"] == pytest.approx(0.6 * 2**-0.5)  # FedAsync's α s(τ) with the same τ
    assert ledger.admit_async(live, update(2, 0), True) == DROPPED  # τ = 2 > 1
    assert ledger.admit_async(live, update(3, 1), True) == MERGED  # τ = 1
    assert ledger.admit_async(live, update(4, 2, float("nan")), True) == DROPPED  # non-finite
    assert ledger.admit_async(live, update(4, 3), False) == DROPPED  # the driver's verdict
    t = live.totals
    assert (live.round, live.state.version) == (3, 3)
    assert (t.client_updates, t.dropped_updates) == (3, 3)
    assert (t.staleness_sum, t.staleness_count, t.staleness_max) == (2, 3, 1)
    assert [int(v) for v in live.participation] == [1, 1, 0, 1, 0]
    assert ledger.committed.round == 0  # nothing committed until the driver commits
    ledger.commit_live(live)
    assert ledger.committed.round == 3 and ledger.committed.totals.staleness_sum == 2


def test_buffered_staleness_at_max_staleness_is_merged_and_above_it_dropped(tiny, tmp_path):
    ledger = make_ledger(tiny, tmp_path, {"method": {"name": "fedbuff"},
                                          "schedule": {"mode": "buffered", "buffer_size": 2, "max_staleness": 1}})
    live = ledger.begin_async()
    assert ledger.admit_async(live, update(0, 0), True) == HELD
    assert ledger.admit_async(live, update(1, 0), True) == MERGED  # buffer full: version 1
    assert live.state.extra["staleness_weight_mean"] == pytest.approx(1.0)
    assert ledger.admit_async(live, update(2, 0), True) == HELD  # τ = 1 = max_staleness
    assert ledger.admit_async(live, update(3, 1), True) == MERGED  # τ = 0: version 2
    # FedBuff weighs the buffer with the same τ: (s(1) + s(0)) / 2, s(τ) = (1 + τ)^-0.5
    assert live.state.extra["staleness_weight_mean"] == pytest.approx((2**-0.5 + 1) / 2)
    assert ledger.admit_async(live, update(4, 0), True) == DROPPED  # τ = 2 > 1
    assert ledger.admit_async(live, update(0, 1), True) == HELD  # τ = 1
    t = live.totals
    assert (live.round, live.state.version, len(live.buffer)) == (2, 2, 1)
    assert (t.client_updates, t.dropped_updates) == (5, 1)
    assert (t.staleness_sum, t.staleness_count, t.staleness_max) == (2, 5, 1)
    record = ledger.finish_async(live)  # a partial buffer is not merged; the final model is evaluated
    assert record["version"] == 2 and record["client_updates"] == 5 and record["staleness_mean"] == pytest.approx(2 / 5)
    assert ledger.committed.done and len(ledger.committed.buffer) == 1


def test_the_sync_evaluation_grid_sees_the_last_completed_round(tiny, tmp_path):
    """eval.every_s = 10: a round ending at t = 25 passes the grid points 10 and 20, which
    see the model before it; the next, ending at 31, passes 30; the last round, ending at
    35, is evaluated itself. Nothing else is written."""
    ledger = make_ledger(tiny, tmp_path, {"eval": {"every_s": 10}})
    for r, end in enumerate((25.0, 31.0, 35.0)):
        book = ledger.open_round(r, None)
        u = update(book.selected[0], r)
        ledger.arrive(book, u)
        ledger.admit(book, u, True)
        new_state = ledger.aggregate_round(book)
        ledger.clock.advance_to(end)
        ledger.commit_round(book, new_state)
    got = [(r["round"], r["version"], r["virtual_time_s"], r["client_updates"]) for r in ledger.run_dir.read_metrics()]
    assert got == [(0, 0, 10, 0), (0, 0, 20, 0), (1, 1, 30, 1), (3, 3, 35, 3)]
    assert ledger.committed.next_eval_s == 40


def test_the_async_evaluation_grid_and_every(tiny, tmp_path):
    ledger = make_ledger(tiny, tmp_path, {"method": {"name": "fedasync"}, "schedule": {"mode": "async"},
                                          "eval": {"every_s": 10}})
    live = ledger.begin_async()
    assert ledger.next_grid_point(live, 9.5) is None
    assert [ledger.next_grid_point(live, 35.0) for _ in range(4)] == [10, 20, 30, None]
    assert live.next_eval_s == 40
    live.round = 2
    assert not ledger.evaluation_due(live)  # with every_s, never per version

    ledger = make_ledger(tiny, tmp_path / "every", {"method": {"name": "fedasync"}, "schedule": {"mode": "async"},
                                                     "eval": {"every": 2}})
    live = ledger.begin_async()
    assert ledger.next_grid_point(live, 1e9) is None
    due = []
    for v in range(1, 5):
        live.round = v
        due.append(ledger.evaluation_due(live))
    assert due == [False, True, False, True]


def test_the_client_learning_rate_schedule(tiny, tmp_path):
    ledger = make_ledger(tiny, tmp_path, {"client": {"lr": 0.4, "lr_schedule": "step", "lr_decay": 0.5,
                                                     "lr_step_rounds": 2},
                                          "schedule": {"rounds": 6}})
    for r, lr in ((0, 0.4), (1, 0.4), (2, 0.2), (5, 0.1)):
        book = ledger.open_round(r, None)
        assert book.lr == pytest.approx(lr) and book.settings.lr == pytest.approx(lr)
        assert ledger.ctx.round_lr == pytest.approx(lr)  # what the strategy reads
    live = ledger.begin_async()
    live.round = 4
    *_, settings = ledger.dispatch(live, [0, 1, 2])
    assert settings.lr == pytest.approx(0.1) and live.dispatches == 1 and live.totals.bytes_down == BROADCAST_BYTES
