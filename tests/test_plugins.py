"""Users' own code without editing the package: plugins reach run, sweep (its spawned
workers) and report; a name only __main__ registered is refused before a sweep starts;
registrations can be replaced; runs can be overwritten; names get a nearest-match hint."""

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.errors import ConfigError, unknown_name

PLUGIN = textwrap.dedent('''
    """A user's module: an inverse-size weighting and a method preset that uses it."""
    from fedweave.methods.registry import MethodInfo, Preset, register
    from fedweave.methods.stages import register_weighting


    def inverse_size(updates, state, ctx):
        import torch
        return torch.tensor([1.0 / u.num_examples for u in updates], dtype=torch.float64)


    register_weighting("{name}_inv", inverse_size, "1 / n_k", replace=True)
    register(MethodInfo("{name}", "FedAvg weighted by 1/n_k", "a user", preset=Preset(weighting="{name}_inv")),
             replace=True)
''')
TINY = ["--set", "schedule.rounds=1", "--set", "schedule.clients_per_round=2", "--set", "data.partition.num_clients=4",
        "--set", "model.hidden=[8]", "--set", "client.epochs=1"]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module `userplug_<n>` in the working folder registering method `userplug_<n>`."""
    name = f"userplug_{tmp_path.name[-8:].replace('-', '_')}".lower()
    (tmp_path / f"{name}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def test_run_with_import_registers_and_records_the_plugin(plugin, tmp_path):
    res = CliRunner().invoke(app, ["run", "--import", plugin, "--set", f"method.name={plugin}", *TINY,
                                   "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["method"] == plugin and summary["status"] == "completed"
    # recorded in the run's config, so --resume (a new process) imports it too
    assert plugin in (tmp_path / "r" / "config.yaml").read_text().split("plugins:")[1].split("\n")[1]


def test_plugins_key_in_a_config_file(plugin, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"plugins: [{plugin}]\nmethod:\n  name: {plugin}\n")
    res = CliRunner().invoke(app, ["run", str(cfg), *TINY, "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output


def test_sweep_workers_import_the_plugin_and_report_reads_it(plugin, tmp_path):
    res = CliRunner().invoke(app, ["sweep", "--import", plugin, "--grid", f"method.name={plugin},fedavg",
                                   "--seeds", "0", "--jobs", "1", *TINY, "--out", str(tmp_path / "sw"), "-q"])
    assert res.exit_code == 0, res.output
    statuses = [json.loads(p.read_text())["status"] for p in (tmp_path / "sw").rglob("summary.json")]
    assert statuses == ["completed", "completed"]
    res = CliRunner().invoke(app, ["report", "--import", plugin, str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output


def test_a_method_registered_in_main_is_refused_before_the_sweep(tmp_path, monkeypatch):
    from fedweave.methods import registry
    from fedweave.sweep import plan_sweep

    code = ("from fedweave.methods.registry import MethodInfo, Preset, register\n"
            "register(MethodInfo('notebook_only', 's', 'c', preset=Preset()), replace=True)\n")
    exec(compile(code, "<notebook>", "exec"), {"__name__": "__main__"})
    try:
        with pytest.raises(ConfigError, match="method 'notebook_only' is registered in __main__.*--import"):
            plan_sweep({"method": {"name": "notebook_only"}}, grid={"client.lr": [0.1, 0.05]}, seeds=[0],
                       out=tmp_path / "sw")
        assert not (tmp_path / "sw").exists()
    finally:
        registry._REGISTRY.pop("notebook_only", None)


def test_failed_imports_name_the_module_and_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_plug.py").write_text("import not_installed_anywhere_xyz\n")
    (tmp_path / "raising_plug.py").write_text("x = 1\nraise RuntimeError('bad setup')\n")
    runner = CliRunner()
    for module, words in (("no_such_plugin_xyz", "no such module"), ("broken_plug", "not_installed_anywhere_xyz"),
                          ("raising_plug", "RuntimeError: bad setup")):
        res = runner.invoke(app, ["run", "--import", module, "--out", str(tmp_path / "r")])
        assert res.exit_code == 2 and module in res.output and words in res.output, res.output
        assert not (tmp_path / "r").exists()
        sys.modules.pop(module, None)


def test_registering_twice_needs_replace():
    from fedweave.methods.stages import WEIGHTINGS, register_weighting

    def w(updates, state, ctx):
        return None

    register_weighting("twice_w", w, "first", replace=True)
    try:
        with pytest.raises(ValueError, match="registered twice; pass replace=True"):
            register_weighting("twice_w", w, "second")
        register_weighting("twice_w", w, "third", replace=True)
        assert WEIGHTINGS["twice_w"][1] == "third"
    finally:
        WEIGHTINGS.pop("twice_w", None)


def test_overwrite_replaces_a_run_and_nothing_else(tmp_path):
    from fedweave import run

    small = {"schedule": {"rounds": 1, "clients_per_round": 2}, "data": {"partition": {"num_clients": 4}},
             "model": {"hidden": [8]}, "client": {"epochs": 1}}
    run(small, out=tmp_path / "r")
    (tmp_path / "r" / "marker").write_text("old run")
    with pytest.raises(ConfigError, match="already holds a run.*--overwrite"):
        run(small, out=tmp_path / "r")
    res = CliRunner().invoke(app, ["run", "--set", "schedule.rounds=1", "--set", "schedule.clients_per_round=2",
                                   "--set", "data.partition.num_clients=4", "--set", "model.hidden=[8]",
                                   "--set", "client.epochs=1", "--out", str(tmp_path / "r"), "--overwrite", "-q"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "r" / "marker").exists() and (tmp_path / "r" / "summary.json").exists()


def test_unknown_names_suggest_the_nearest():
    assert "Did you mean 'fedavg'?" in str(unknown_name("method", "fedavgg", ["fedavg", "fedprox", "scaffold"]))
    assert "Did you mean" not in str(unknown_name("method", "zzz", ["fedavg", "fedprox"]))
    res = CliRunner().invoke(app, ["run", "--set", "method.name=fedprx"])
    assert res.exit_code == 2 and "Did you mean 'fedprox'?" in res.output


def test_version_and_a_help_that_does_not_load_torch():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("fedweave ")
    code = "import sys, fedweave.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_default_run_name_follows_an_overridden_method():
    from fedweave.config import load_config

    assert load_config(None).name == "quickstart"
    assert load_config(None, ["method.name=fedprox"]).name == "fedprox"
    assert load_config({"name": "mine", "method": {"name": "fedprox"}}).name == "mine"
