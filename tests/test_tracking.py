"""Trackers: TensorBoard and MLflow records can be read back; missing packages are config errors."""

import importlib.util

import pytest

import fedweave.tracking as tracking
from fedweave import load_config, run
from fedweave.errors import ConfigError

TINY = [
    "data.partition.num_clients=4", "model.hidden=[8]", "client.epochs=1", "schedule.rounds=3",
    "schedule.clients_per_round=2", "eval.per_client=true",
]


def test_trackers_are_off_by_default():
    out = load_config().output
    assert (out.tensorboard, out.mlflow, out.mlflow_tracking_uri, out.mlflow_experiment) == (False, False, None, "fedweave")
    assert tracking.make_trackers(load_config(), "unused") == []


def test_flatten_uses_dotted_keys():
    flat = tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}})
    assert flat == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(None, out=tmp_path / "run", overrides=TINY + ["output.tensorboard=true"])
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"accuracy", "loss", "bytes_up", "client_acc_mean"} <= set(tags["scalars"])
    assert "client_scores" in tags["histograms"]
    accuracy = acc.Scalars("accuracy")
    assert [e.step for e in accuracy] == [1, 2, 3]
    assert accuracy[-1].value == pytest.approx(result.history[-1]["accuracy"], rel=1e-6)
    assert "config/text_summary" in tags["tensors"] and "summary/text_summary" in tags["tensors"]
    # the headline figure, once, at the last round
    assert [(e.step, e.value) for e in acc.Scalars("headline/accuracy")] == [
        (3, pytest.approx(result.summary["final_metric"], rel=1e-6))]


def test_mlflow_records_read_back(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    result = run(None, out=tmp_path / "run", overrides=TINY + ["output.mlflow=true", "output.mlflow_experiment=cmp"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cmp")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["fedweave.status"] == "completed"
    assert found.data.tags["fedweave.headline"] == "accuracy"  # the figure the run is judged by
    assert found.data.params["client.lr"] == "0.1" and found.data.params["model.hidden"] == "[8]"
    history = client.get_metric_history(found.info.run_id, "accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert history[-1].value == pytest.approx(result.history[-1]["accuracy"])
    assert found.data.metrics["summary/final_metric"] == pytest.approx(result.summary["final_metric"])
    assert not (tmp_path / "mlruns").exists()


def test_missing_package_is_reported_before_the_run_directory_exists(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r'output\.mlflow=true needs .*pip install "fedweave\[tracking\]"'):
        run(None, out=tmp_path / "run", overrides=TINY + ["output.mlflow=true"])
    assert not (tmp_path / "run").exists()


def test_a_failing_tracker_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    class Broken(tracking.Tracker):
        name = "broken"

        def log_metrics(self, record, step):
            raise OSError("disk full")

    monkeypatch.setattr(tracking, "TensorBoardTracker", lambda log_dir: Broken())
    monkeypatch.setattr(tracking, "check_trackers", lambda out: None)  # works without tensorboard installed
    monkeypatch.setattr("fedweave.experiment.check_trackers", lambda out: None)
    with pytest.warns(UserWarning, match="broken tracking stopped"):
        result = run(None, out=tmp_path / "run", overrides=TINY + ["output.tensorboard=true"])
    assert result.status == "completed"


def test_an_mlflow_store_that_cannot_be_opened_is_a_config_error(tmp_path):
    pytest.importorskip("mlflow")
    with pytest.raises(ConfigError, match="could not start an MLflow run in 'bogus://nowhere'"):
        run(None, out=tmp_path / "run", overrides=TINY + ["output.mlflow=true", "output.mlflow_tracking_uri=bogus://nowhere"])
