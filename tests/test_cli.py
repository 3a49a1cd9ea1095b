"""The ``fedweave`` command line: run, errors (exit 2, no traceback), listings, partition."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedweave.cli import app

SMALL = ["--set", "schedule.rounds=2", "--set", "schedule.clients_per_round=3", "--set", "data.partition.num_clients=5",
         "--set", "model.hidden=[16]", "--set", "client.epochs=1"]


def invoke(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    text = " ".join(result.output.split())  # rich wraps long lines
    return result, text


def test_run_small_exits_0_and_writes_run_dir(tmp_path):
    out = tmp_path / "run"
    result, text = invoke("run", "--quiet", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert "run directory" in text
    assert "completed" in text


def test_run_from_yaml_file(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: fromyaml\nschedule:\n  rounds: 2\n  clients_per_round: 2\n"
                   "data:\n  partition:\n    num_clients: 4\nmodel:\n  name: logistic\nclient:\n  epochs: 1\n")
    out = tmp_path / "run"
    result, _ = invoke("run", cfg, "--quiet", "--out", out, "--set", "client.lr=0.05")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == "fromyaml"
    assert "lr: 0.05" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--set", "method.name=fedfoo"], ["Unknown method 'fedfoo'", "fedavg", "scaffold"]),
        (["--set", "data.partition.alpha=0"], ["data.partition.alpha"]),
        (["--set", "client.lr"], ["client.lr", "key=value"]),
        (["--set", "data.dataset=mnist", "--set", "data.root=/definitely/not/here"], ["/definitely/not/here"]),
        (["--set", "schedule.clients_per_round=50"], ["clients_per_round"]),
        (["--set", "clinet.lr=0.1"], ["clinet", "allowed"]),
        (["--set", "executor.kind=vectorized", "--set", "method.name=scaffold"],
         ["executor.kind=vectorized cannot run", "customises training", "executor.kind=serial", "auto"]),
        (["--set", "executor.kind=ray", "--set", "executor.address=127.0.0.1:1"],
         ["Cannot reach Ray", "127.0.0.1:1", "ray start --head", "executor.kind=serial"]),
        (["--set", "executor.kind=ray", "--set", "executor.address=headnode"], ["HOST:PORT"]),
    ],
    ids=["unknown-method", "alpha-zero", "set-without-equals", "missing-mnist-root", "too-many-per-round",
         "unknown-section", "vectorized-unsupported", "ray-unreachable", "ray-bad-address"],
)
def test_run_errors_exit_2_without_traceback_or_run_dir(tmp_path, args, needles):
    out = tmp_path / "x"
    result, text = invoke("run", "--quiet", "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error" in text.lower()
    for needle in needles:
        assert needle in text
    assert not out.exists()


def test_ray_without_a_cluster_exits_2_and_leaves_no_run_dir(tmp_path):
    """An address that is certainly unreachable: a local port this test holds bound but not
    listening (connections are refused at once). ``address=auto`` would pick up any Ray
    instance running on the host, so it cannot be relied on to find none."""
    pytest.importorskip("ray")
    out = tmp_path / "x"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))  # reserved for the test's lifetime; never listen()s
        address = f"127.0.0.1:{held.getsockname()[1]}"
        result, text = invoke("run", "--quiet", "--out", out, *SMALL, "--set", "executor.kind=ray",
                              "--set", f"executor.address={address}")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Cannot reach Ray" in text and address in text and "executor.kind=serial" in text
    assert not out.exists()


def test_ray_not_installed_exits_2_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "x"
    result, text = invoke("run", "--quiet", "--out", out, *SMALL, "--set", "executor.kind=ray")
    assert result.exit_code == 2, result.output
    assert 'pip install "fedweave[ray]"' in text and "executor.kind=serial" in text
    assert not out.exists()


def test_missing_config_file_exits_2(tmp_path):
    out = tmp_path / "x"
    missing = tmp_path / "nope.yaml"
    result, text = invoke("run", missing, "--quiet", "--out", out)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "nope.yaml" in text and "does not exist" in text
    assert not out.exists()


def test_resume_with_config_rejected(tmp_path):
    result, text = invoke("run", "--resume", tmp_path, "--set", "client.lr=0.1")
    assert result.exit_code == 2
    assert "--resume" in text


def test_resume_completed_run_exits_2(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", "--quiet", "--out", out, *SMALL)[0].exit_code == 0
    result, text = invoke("run", "--quiet", "--resume", out)
    assert result.exit_code == 2
    assert "already completed" in text


def test_installed_entry_point_error_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("fedweave")
    if not exe.exists():
        pytest.skip("the fedweave console script is not installed next to this Python")
    out = tmp_path / "x"
    proc = subprocess.run([str(exe), "run", "--quiet", "--out", str(out), "--set", "method.name=nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Unknown method 'nope'" in " ".join((proc.stderr + proc.stdout).split())
    assert not out.exists()


def test_methods_lists_names():
    result, text = invoke("methods")
    assert result.exit_code == 0
    for name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova"):
        assert name in text


def test_datasets_lists_names():
    result, text = invoke("datasets")
    assert result.exit_code == 0
    for name in ("digits", "mnist", "fashion_mnist", "synthetic"):
        assert name in text


def test_datasets_lists_the_sources_task_bundles_register_in_a_fresh_process():
    """A fresh interpreter: the task bundles' sources (pydocs, sr<k>:<source>, clips, ...)
    are registered only when fedweave.tasks is imported, which `datasets` must do itself."""
    import subprocess
    import sys

    from helpers_subprocess import subprocess_env

    out = subprocess.run([sys.executable, "-m", "fedweave", "datasets"], capture_output=True, text=True,
                         env=subprocess_env(COLUMNS="200"), timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("digits", "pydocs", "sr<k>:<source>", "burgers1d", "skeleton", "clips", "shapesvqa"):
        assert name in out.stdout, name


def test_models_lists_names():
    result, text = invoke("models")
    assert result.exit_code == 0
    for name in ("logistic", "mlp", "cnn", "lenet5", "resnet"):
        assert name in text


def test_partition_prints_sizes_and_heterogeneity():
    from fedweave import load_config
    from fedweave.data.federated import build_federated

    result, text = invoke("partition", "--set", "data.partition.num_clients=5")
    assert result.exit_code == 0, result.output
    assert "5 clients" in text
    assert "heterogeneity" in text
    data = build_federated(load_config(None, ["data.partition.num_clients=5"]).data)
    sizes = [len(t) for t in data.client_train]
    assert f"min {min(sizes)}" in text and f"max {max(sizes)}" in text
    assert f"{sum(sizes)} training examples" in text


def test_partition_error_exits_2():
    result, text = invoke("partition", "--set", "data.partition.kind=zipf")
    assert result.exit_code == 2
    assert "data.partition.kind" in text
    assert "Traceback" not in result.output


def test_python_dash_m_fedweave_is_the_command_line():
    import subprocess
    import sys

    from helpers_subprocess import subprocess_env

    out = subprocess.run([sys.executable, "-m", "fedweave", "--version"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("fedweave "), out.stderr
