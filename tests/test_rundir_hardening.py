"""Run directories (issue 20): one process per directory, SIGTERM handled like Ctrl-C,
records whole or absent on a full disk, and runs that trained to chance flagged."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fedweave
from fedweave.cli import app
from fedweave.errors import FedweaveError
from helpers_runs import full_disk_write
from helpers_subprocess import subprocess_env

TINY = {
    "name": "tiny", "seed": 0,
    "data": {"dataset": "digits", "partition": {"kind": "dirichlet", "num_clients": 5, "alpha": 0.5}},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"epochs": 1, "batch_size": 32, "lr": 0.1},
    "schedule": {"rounds": 4, "clients_per_round": 3},
}


def env() -> dict:
    return subprocess_env()


def records(run_dir: Path) -> list[dict]:
    text = (run_dir / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n")  # no half-written last line
    return [json.loads(line) for line in text.splitlines()]


def stopped_run(tmp_path: Path, rounds_done: int = 2, rounds: int = 4) -> Path:
    """A run of TINY interrupted (Ctrl-C) after ``rounds_done`` rounds, with its checkpoint."""
    out = tmp_path / "run"

    def progress(done, total, record):
        if done == rounds_done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedweave.run({**TINY, "schedule": {**TINY["schedule"], "rounds": rounds}}, out=out, progress=progress)
    assert (out / "checkpoint.pt").exists()
    return out


HOLD = ("import sys, time\nfrom fedweave.rundir import RunDirectory\nd = RunDirectory(sys.argv[1])\nd.lock()\n"
        "print('locked', flush=True)\ntime.sleep(120)\n")


def hold_lock(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


# -- one process per run directory ------------------------------------------------------------------


def test_a_second_resume_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = stopped_run(tmp_path)
    before = (out / "metrics.jsonl").read_text()
    holder = hold_lock(out)  # another process resuming (or running into) this directory
    try:
        res = CliRunner().invoke(app, ["run", "--quiet", "--resume", str(out)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert f"in use by process {holder.pid}" in text and "Traceback" not in res.output
        assert (out / "metrics.jsonl").read_text() == before  # nothing interleaved
    finally:
        holder.kill()  # dies without releasing anything by itself: its pid stays in .lock
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)
    result = fedweave.resume(out)  # the dead holder's lock is stale: taken over
    assert result.status == "completed"
    assert [r["round"] for r in records(out)] == [1, 2, 3, 4]
    assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_a_second_run_into_a_directory_in_use_is_refused_and_the_directory_kept(tmp_path):
    out = tmp_path / "fresh"
    holder = hold_lock(out)  # a run that has taken the directory but not yet written config.yaml
    try:
        with pytest.raises(FedweaveError, match=f"in use by process {holder.pid}"):
            fedweave.run(TINY, out=out)
        assert out.is_dir() and sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_two_resumes_at_once_one_runs_and_the_other_is_refused(tmp_path):
    out = stopped_run(tmp_path, rounds_done=1, rounds=60)  # long enough for the two to overlap
    procs = [subprocess.Popen([sys.executable, "-m", "fedweave.cli", "run", "--quiet", "--resume", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(o for p, o in zip(procs, outs) if p.returncode == 2)
    assert "in use by process" in " ".join(refused[1].split())
    assert [r["round"] for r in records(out)] == list(range(1, 61))  # each round once


# -- SIGTERM ------------------------------------------------------------------------------------------


def test_sigterm_stops_fedweave_run_like_ctrl_c_with_a_checkpoint_and_exit_143(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedweave.cli", "run", "--quiet", "--out", str(out), "--set", "schedule.rounds=400",
           "--set", "schedule.clients_per_round=3", "--set", "data.partition.num_clients=5",
           "--set", "model.hidden=[16]", "--set", "client.epochs=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 1 <= summary["rounds_completed"] < 400
    assert (out / "checkpoint.pt").exists()
    done = [r["round"] for r in records(out)]
    assert done == list(range(1, summary["rounds_completed"] + 1))


# -- a full disk --------------------------------------------------------------------------------------


def _full_disk_after(monkeypatch, appends_ok: int):
    """os.write to metrics.jsonl: ``appends_ok`` whole appends, then half a line and ENOSPC."""
    monkeypatch.setattr(os, "write", full_disk_write(appends_ok))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell the metrics file's writes apart")
def test_a_full_disk_stops_with_whole_lines_a_clear_message_and_a_resumable_checkpoint(tmp_path, monkeypatch):
    reference = fedweave.run(TINY, out=tmp_path / "reference")
    out = tmp_path / "run"
    _full_disk_after(monkeypatch, appends_ok=2)
    with pytest.raises(FedweaveError) as info:
        fedweave.run(TINY, out=out)
    monkeypatch.undo()  # space freed
    message = str(info.value)
    assert "disk" in message and "full" in message and f"fedweave run --resume {out}" in message
    assert "after round 3" in message  # round 3 was committed; only its record's append failed
    assert [r["round"] for r in records(out)] == [1, 2]  # two whole lines; the half line was cut off
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "disk is full" in summary["message"]
    result = fedweave.resume(out)
    assert result.status == "completed"
    assert torch.equal(result.params, reference.params)
    ours = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records(out)]
    theirs = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records(tmp_path / "reference")]
    assert ours == theirs  # the lost record of round 3 is back, from the checkpoint


def test_metrics_append_is_whole_or_absent(tmp_path, monkeypatch):
    from fedweave.rundir import RunDirectory

    d = RunDirectory(tmp_path)
    d.create("name: x\n")
    d.append_metrics({"round": 1, "accuracy": 0.5})
    _full_disk_after(monkeypatch, appends_ok=0)
    with pytest.raises(OSError) as info:
        d.append_metrics({"round": 2, "accuracy": 0.25, "pad": "x" * 1000})
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 1, "accuracy": 0.5}\n'


def test_a_cut_off_last_line_is_not_read_as_a_record(tmp_path):
    from fedweave.rundir import RunDirectory

    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2, "acc')
    assert RunDirectory(tmp_path).read_metrics() == [{"round": 1}]


# -- degenerate runs ----------------------------------------------------------------------------------


def test_degenerate_rule_both_sides_by_hand():
    from fedweave.metrics import degenerate_reason

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4])  # the most common class: 3 of 10
    bar = 0.3 + 2 * math.sqrt(0.3 * 0.7 / 10)  # chance + two standard errors = 0.5898...
    loss_bar = 10 * math.log(5)  # 16.09...

    def reason(accuracy, train_loss):
        return degenerate_reason([{"accuracy": 0.9, "train_loss": 1.0}, {"accuracy": accuracy, "train_loss": train_loss}],
                                 num_classes=5, test_labels=labels)

    assert reason(bar - 1e-9, loss_bar + 1e-6).startswith("degenerate run")
    assert reason(bar - 1e-9, None) is not None  # every update of the last interval non-finite
    assert reason(bar - 1e-9, float("nan")) is not None
    assert reason(bar + 1e-6, 1e9) is None  # better than chance: a huge loss alone is no flag
    assert reason(0.0, loss_bar - 1e-6) is None  # at chance but the loss did not explode (just untrained)
    assert reason(0.2, 1e7) == reason(0.2, 1e7)
    assert "0.5898" in reason(0.2, 1e7) and "10·ln 5 = 16.1" in reason(0.2, 1e7)


def test_a_run_trained_to_chance_with_an_exploding_loss_is_flagged_in_summary_and_table(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--quiet", "--out", str(out), "--set", "client.lr=100",
                                   "--set", "schedule.rounds=3", "--set", "client.epochs=1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    last = records(out)[-1]
    assert summary["status"] == "completed"
    y = fedweave.build_experiment(fedweave.load_config(out / "config.yaml")).data.y_test.numpy()
    p = np.bincount(y).max() / len(y)
    assert last["accuracy"] <= p + 2 * math.sqrt(p * (1 - p) / len(y))  # the premise, checked by hand
    assert last["train_loss"] > 10 * math.log(10)
    assert summary["warning"].startswith("degenerate run")
    text = " ".join(res.output.split())
    assert "completed (degenerate)" in text and "warning: degenerate run" in text


@pytest.mark.parametrize("overrides", [["client.lr=1e8", "model.name=logistic"], []],
                         ids=["huge-loss-good-accuracy", "healthy"])
def test_runs_better_than_chance_are_not_flagged(tmp_path, overrides):
    args = [a for o in overrides for a in ("--set", o)]
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--quiet", "--out", str(out), *args, "--set", "schedule.rounds=3"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    y = fedweave.build_experiment(fedweave.load_config(out / "config.yaml")).data.y_test.numpy()
    p = np.bincount(y).max() / len(y)
    assert summary["final_accuracy"] > p + 2 * math.sqrt(p * (1 - p) / len(y)) + 0.1  # the premise: above chance
    if overrides:  # the other half of the rule holds: the training loss exploded
        assert records(out)[-1]["train_loss"] > 10 * math.log(10)
    assert "warning" not in summary and "degenerate" not in res.output
