"""Sweeps: grid parsing and expansion, validation before running, failures, resuming."""

import csv
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.errors import ConfigError
from fedweave.sweep import (
    expand,
    parse_grid,
    parse_seeds,
    plan_sweep,
    run_status,
    run_sweep,
    split_values,
    value_slug,
)

HERE = Path(__file__).resolve().parent
TINY = {
    "data": {"partition": {"num_clients": 4}},
    "model": {"hidden": [8]},
    "client": {"epochs": 1},
    "schedule": {"rounds": 2, "clients_per_round": 2},
    "eval": {"per_client": True},
}
BROKEN = "helpers_sweep:breaks_in_training"


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


# -- grid parsing and expansion ----------------------------------------------------------


def test_split_values_keeps_brackets_and_quotes_together():
    assert split_values("fedavg,fedprox") == ["fedavg", "fedprox"]
    assert split_values("[16],[32,32]") == ["[16]", "[32,32]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values("{a: 1, b: 2};{a: 3}") == ["{a: 1, b: 2}", "{a: 3}"]


def test_values_are_parsed_as_yaml():
    (axis,) = parse_grid(["model.hidden=[16],[32, 32]"])
    assert axis.values == ([16], [32, 32])
    (lr,) = parse_grid(["client.lr=0.1,0.01"])
    assert lr.values == (0.1, 0.01)


def test_cross_product_and_readable_names():
    axes = parse_grid(["method.name=fedavg,fedprox", "data.partition.alpha=0.1,1.0", "model.hidden=[16],[32,32]"])
    combos = expand(axes)
    assert len(combos) == 8
    names = [c.name for c in combos]
    assert names[0] == "method.name=fedavg__data.partition.alpha=0.1__model.hidden=16"
    assert names[-1] == "method.name=fedprox__data.partition.alpha=1.0__model.hidden=32-32"
    assert len(set(names)) == 8
    assert combos[1].overrides() == {"method": {"name": "fedavg"}, "data": {"partition": {"alpha": 0.1}},
                                     "model": {"hidden": [32, 32]}}
    assert combos[0].params == {"method.name": "fedavg", "data.partition.alpha": "0.1", "model.hidden": "[16]"}
    assert expand([])[0].name == "base"


def test_value_slug_is_filesystem_safe():
    for text in ["[32, 32]", "a/b", "pkg.mod:factory", "{x: 1}", "'q'"]:
        slug = value_slug(text)
        assert "/" not in slug and " " not in slug and ":" not in slug and slug


@pytest.mark.parametrize("item, needle", [
    ("method.name", "KEY=V1,V2"),
    ("=a,b", "KEY=V1,V2"),
    ("client.lr=0.1,,0.2", "empty value"),
    ("client.lr=0.1,0.1", "repeats"),
    ("seed=0,1", "--seeds"),
    ("output.dir=a,b", "--out"),
    ("model.hidden=[1, 2],[1,2]", "clashing"),
])
def test_bad_grid_options(item, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_grid([item])


def test_grid_key_twice_and_seeds():
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["client.lr=0.1", "client.lr=0.2"])
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    assert parse_seeds(None, default=7) == [7]
    for bad in ("a,b", "1,1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


# -- validation before anything runs -----------------------------------------------------------


def test_unknown_key_is_reported_before_running(tmp_path, tiny_yaml):
    out = tmp_path / "sw"
    with pytest.raises(ConfigError) as err:
        run_sweep(tiny_yaml, grid=["client.lrr=0.1,0.2"], seeds="0", out=out, jobs=1)
    assert "client.lrr" in str(err.value) and "allowed here" in str(err.value) and "lr" in str(err.value)
    assert not out.exists()


def test_invalid_values_are_reported_with_allowed_values(tmp_path, tiny_yaml):
    with pytest.raises(ConfigError) as err:
        plan_sweep(tiny_yaml, grid=["method.name=fedavg,fedfoo", "client.optimizer=sgd,sgdd"], seeds="0", out=tmp_path / "s")
    text = str(err.value)
    assert "3 of 4 sweep combinations are invalid" in text
    assert "fedfoo" in text and "fedprox" in text  # the unknown method and the allowed ones
    assert "client.optimizer" in text and "'adam'" in text


def test_values_are_checked_against_the_data(tmp_path, tiny_yaml):
    with pytest.raises(ConfigError, match="clients_per_round=9 exceeds the 4 clients"):
        plan_sweep(tiny_yaml, grid=["schedule.clients_per_round=2,9"], seeds="0", out=tmp_path / "s")


def test_grid_and_set_on_the_same_key_is_refused(tmp_path, tiny_yaml):
    with pytest.raises(ConfigError, match="both in --grid and in --set"):
        plan_sweep(tiny_yaml, grid=["client.lr=0.1,0.2"], seeds="0", out=tmp_path / "s", overrides=["client.lr=0.3"])


def test_cli_reports_bad_grid_with_exit_2(tmp_path, tiny_yaml):
    res = CliRunner().invoke(app, ["sweep", str(tiny_yaml), "--grid", "method.name=fedavg,nope", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2
    assert "nope" in res.output and "fedavg" in res.output


# -- running: failures, outputs, resuming ---------------------------------------------------------


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, tiny_yaml):
    """A real sweep on digits, 2 models x 2 seeds; the broken model fails at run time (not at validation)."""
    sys.path.insert(0, str(HERE))  # spawn workers inherit sys.path, so they import helpers_sweep too
    out = tmp_path_factory.mktemp("sweep") / "cmp"
    seen = []
    result = run_sweep(tiny_yaml, grid=[f"model.name=mlp,{BROKEN}"], seeds="0,1", out=out, jobs=2,
                       progress=lambda s: seen.append((s.done, s.total, s.failed)))
    assert seen[0] == (0, 4, 0) and seen[-1] == (4, 4, 2)
    assert result.count("completed") == 2 and len(result.failed) == 2
    return out


def test_sweep_layout_and_results(sweep_dir, tiny_yaml):
    for combo in ["model.name=mlp", "model.name=helpers_sweep_breaks_in_training"]:
        for seed in (0, 1):
            assert (sweep_dir / combo / f"seed{seed}").is_dir()
    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert info["seeds"] == [0, 1] and [g["key"] for g in info["grid"]] == ["model.name"]
    assert info["config"] == str(tiny_yaml.resolve()) and len(info["runs"]) == 4

    rows = _rows(sweep_dir)
    assert len(rows) == 4
    assert {"combination", "model.name", "seed", "status", "final_metric", "bytes_up"} <= set(rows[0])
    ok = [r for r in rows if r["model.name"] == "mlp"]
    assert {r["status"] for r in ok} == {"completed"} and all(float(r["final_metric"]) > 0 for r in ok)
    summary = json.loads((sweep_dir / ok[0]["run_dir"] / "summary.json").read_text())
    assert summary["seed"] == int(ok[0]["seed"])


def test_failing_runs_are_recorded_and_do_not_stop_the_others(sweep_dir):
    rows = _rows(sweep_dir)
    failed = [r for r in rows if r["model.name"] == BROKEN]
    assert len(failed) == 2 and {r["status"] for r in failed} == {"failed"}
    for r in failed:
        text = (sweep_dir / r["run_dir"] / "error.txt").read_text()
        assert "deliberate failure in training" in text and "Traceback" in text
        assert "deliberate failure" in r["error"]
    table = (sweep_dir / "table.md").read_text()
    assert "0/2 (2 failed)" in table and "2/2" in table


def test_rerun_skips_finished_runs_and_redoes_the_rest(sweep_dir):
    fedavg0 = sweep_dir / "model.name=mlp" / "seed0"
    partial = sweep_dir / "model.name=mlp" / "seed1"
    # a finished run, marked so we can tell whether it is touched
    (fedavg0 / "marker").write_text("kept")
    mtime = (fedavg0 / "summary.json").stat().st_mtime_ns
    # a run stopped half-way: no summary, stale partial files
    (partial / "summary.json").unlink()
    (partial / "marker").write_text("stale")
    assert run_status(partial) == "unfinished"

    res = CliRunner().invoke(app, ["sweep", _config_path(sweep_dir), "--grid", f"model.name=mlp,{BROKEN}",
                                   "--seeds", "0,1", "--jobs", "2", "--out", str(sweep_dir), "--quiet"])
    assert res.exit_code == 1, res.output  # the broken runs are tried again and fail again: exit 1, naming them
    assert "2 run(s) failed" in res.output
    assert (fedavg0 / "marker").read_text() == "kept"
    assert (fedavg0 / "summary.json").stat().st_mtime_ns == mtime
    assert not (partial / "marker").exists()  # rerun from scratch
    assert run_status(partial) == "completed"
    assert sum(r["status"] == "completed" for r in _rows(sweep_dir)) == 2


def _config_path(sweep_dir: Path) -> str:
    return json.loads((sweep_dir / "sweep.json").read_text())["config"]


def test_finished_runs_with_another_config_are_not_mixed(sweep_dir):
    with pytest.raises(ConfigError, match="different config"):
        plan_sweep(_config_path(sweep_dir), grid=[f"model.name=mlp,{BROKEN}"], seeds="0,1", out=sweep_dir,
                   overrides=["client.lr=0.05"])


def test_parallel_workers_may_not_share_one_sqlite_mlflow_store(tmp_path, tiny_yaml, monkeypatch):
    monkeypatch.setattr("fedweave.tracking.check_trackers", lambda out: None)  # mlflow need not be installed
    monkeypatch.setattr("fedweave.experiment.check_trackers", lambda out: None)
    shared = ["output.mlflow=true", f"output.mlflow_tracking_uri=sqlite:///{tmp_path}/all.db"]
    with pytest.raises(ConfigError, match="--jobs 1"):
        run_sweep(tiny_yaml, grid=["client.lr=0.1,0.2"], seeds="0", out=tmp_path / "s", overrides=shared, jobs=2)
    assert not (tmp_path / "s").exists()


def test_plan_with_list_values_and_one_data_build_per_data_section(tmp_path, tiny_yaml, monkeypatch):
    import fedweave.data.federated as federated

    builds = []
    real = federated.build_federated
    monkeypatch.setattr(federated, "build_federated", lambda cfg: builds.append(cfg.partition.alpha) or real(cfg))
    plan = plan_sweep(tiny_yaml, grid=["model.hidden=[4],[4,4]", "data.partition.alpha=0.1,1.0"], seeds="0,1",
                      out=tmp_path / "s")
    assert len(plan.runs) == 8 and sorted(builds) == [0.1, 1.0]
    assert plan.runs[2].rel == "model.hidden=4__data.partition.alpha=1.0/seed0"
    assert plan.runs[2].config["model"]["hidden"] == [4] and plan.runs[2].config["data"]["partition"]["alpha"] == 1.0
    assert plan.runs[7].config["model"]["hidden"] == [4, 4] and plan.runs[7].config["seed"] == 1
    assert not (tmp_path / "s").exists()  # planning writes nothing
