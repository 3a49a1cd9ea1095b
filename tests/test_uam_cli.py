"""Bad input to the UAM system on the command line: exit code 2, a message naming the
problem and the allowed values, no traceback and no run directory."""

from __future__ import annotations

import pytest

from helpers_runs import assert_run_refused

FNO = ["--set", "data.dataset=burgers1d:4:32:8", "--set", "data.partition.kind=natural", "--set", "task.kind=regression",
       "--set", "model.name=fno1d", "--set", "model.width=4", "--set", "model.kwargs={modes: 4, depth: 1, proj: 4}",
       "--set", "schedule.rounds=1", "--set", "schedule.clients_per_round=2", "--set", "client.epochs=1"]


@pytest.mark.parametrize(
    "args,needles",
    [
        (FNO + ["--set", "system.profile=uam_wireless", "--set", "system.uam.gbs_density=0"],
         ["system.uam.gbs_density", "greater than 0"]),
        (FNO + ["--set", "system.profile=uam_wireless", "--set", "system.uam.gbs_density=-2"],
         ["system.uam.gbs_density"]),
        (FNO + ["--set", "system.profile=uam_wireless", "--set", "system.uam.path_loss_exponent=2"],
         ["system.uam.path_loss_exponent", "greater than 2"]),
        (FNO + ["--set", "system.profile=uam_wireless", "--set", "system.uam.sir_threshold_db=55"],
         ["system.uam.sir_threshold_db", "less than or equal to 40"]),
        (FNO + ["--set", "system.profile=uam_wireless", "--set", "system.uam.sir_threshold_db=40",
                "--set", "system.uam.gbs_density=50", "--set", "system.uam.max_attempts=10"],
         ["connectivity probability", "sir_threshold_db"]),
        (FNO + ["--set", "model.kwargs={modes: 17}"], ["modes=17", "allowed: 1 <= modes <= 16"]),
        (["--set", "task.kind=regression", "--set", "schedule.rounds=1", "--set", "model.hidden=[8]"],
         ["regression needs real-valued targets", "burgers1d"]),
        (FNO + ["--set", "task.kind=classification"], ["classification needs integer class labels", "regression"]),
        (FNO + ["--set", "data.dataset=burgers1d:1"], ["corridors >= 2"]),
    ],
    ids=["density-zero", "density-negative", "pathloss-2", "threshold-high", "hopeless-channel", "fno-modes",
         "regression-on-classes", "classification-on-fields", "one-corridor"],
)
def test_uam_bad_input_exits_2_without_run_dir(tmp_path, args, needles):
    assert_run_refused(tmp_path / "x", args, needles)
