"""Shared test helpers: a run that records every round's updates, and a CLI refusal check."""

from __future__ import annotations

import errno
import os

from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.config import load_config
from fedweave.experiment import _execute, build_experiment
from fedweave.rundir import RunDirectory


def run_capturing(tmp_path, name, overrides):
    """Run and record every round's updates as the strategy receives them, as
    ``{client: (delta, num_steps, loss)}`` per round; returns the rounds, the run's result
    and the experiment (whose executor stays reachable)."""
    cfg = load_config(None, overrides)
    exp = build_experiment(cfg)
    rounds = []

    def capture(updates, state, round_, ctx):
        rounds.append({u.client_id: (u.delta.clone(), u.num_steps, u.metrics["loss"]) for u in updates})
        return updates

    exp.cohort_hooks.append(capture)
    run_dir = RunDirectory(tmp_path / name)
    run_dir.create(cfg.to_yaml())
    result = _execute(exp, run_dir, None, None)
    return rounds, result, exp


def assert_run_refused(out, args, needles) -> None:
    """``fedweave run --out OUT ARGS`` exits 2 with every needle in its one paragraph, no
    traceback and no run directory."""
    result = CliRunner().invoke(app, ["run", "--quiet", "--out", str(out), *args])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text, (needle, text)
    assert not out.exists()


def full_disk_write(appends_ok: int, real_write=os.write):
    """A stand-in for ``os.write``: the first ``appends_ok`` appends to ``metrics.jsonl`` go
    through whole, the next writes half its line and fails with ENOSPC (a full disk)."""
    state = {"appends": 0}

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.endswith("metrics.jsonl"):
            state["appends"] += 1
            if state["appends"] > appends_ok:
                real_write(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    return write
