"""One way to register things, one place that builds an executor, and the old import
paths that keep working after the move to fedweave.core and fedweave.tasks."""

from __future__ import annotations

import importlib
import pickle

import pytest

from fedweave.errors import ConfigError


def test_register_task_refuses_a_second_registration_unless_replace():
    from fedweave.tasks import TASKS, ClassificationTask, make_task, register_task

    with pytest.raises(ValueError, match="'classification' registered twice"):
        register_task("classification", ClassificationTask, "again")
    saved = TASKS["classification"]

    class Relabelled(ClassificationTask):
        pass

    try:
        register_task("classification", Relabelled, "replaced", replace=True)
        assert type(make_task("classification")) is Relabelled
    finally:
        TASKS["classification"] = saved


def test_register_model_replace():
    from torch import nn

    from fedweave.models import EXTRA_MODELS, build_model, register_model

    with pytest.raises(ValueError, match="'srnet' registered twice"):
        register_model("srnet", lambda **kw: nn.Identity(), "again")
    with pytest.raises(ValueError, match="'mlp' registered twice"):
        register_model("mlp", lambda **kw: nn.Identity(), "a built-in one", replace=True)
    saved = EXTRA_MODELS["srnet"]
    try:
        register_model("srnet", lambda input_shape, num_classes, **kw: nn.Identity(), "replaced", replace=True)
        assert isinstance(build_model("srnet", (1, 8, 8), 10), nn.Identity)
    finally:
        EXTRA_MODELS["srnet"] = saved


def test_make_executor_builds_every_kind_in_one_place(tiny):
    import fedweave
    from fedweave.config import ExecutorConfig
    from fedweave.sim.executors import EXECUTORS, SerialExecutor, make_executor
    from fedweave.sim.vectorized import VectorizedExecutor

    assert set(EXECUTORS) == {"serial", "vectorized", "auto", "ray"}
    unstarted = make_executor("serial")
    assert isinstance(unstarted, SerialExecutor) and unstarted.worker is None
    exp = fedweave.build_experiment(fedweave.load_config(tiny({})))
    setup = exp.worker_setup()
    serial = make_executor(ExecutorConfig(kind="serial"), setup)
    assert serial.worker is not None  # started with the setup
    vec = make_executor(ExecutorConfig(kind="vectorized", max_cohort=3), setup, "sgd")
    assert isinstance(vec, VectorizedExecutor) and vec.max_cohort == 3
    with pytest.raises(ValueError, match="worker setup"):
        make_executor("auto")
    with pytest.raises(ConfigError, match="Unknown executor 'gpu'.*auto.*ray.*serial.*vectorized"):
        make_executor("gpu")


def test_old_import_paths_are_the_new_objects():
    pairs = [
        ("fedweave.params", "FlatModel", "fedweave.core.params"),
        ("fedweave.messages", "Update", "fedweave.core.messages"),
        ("fedweave.rng", "derive_seed", "fedweave.core.rng"),
        ("fedweave.errors", "ConfigError", "fedweave.core.errors"),
        ("fedweave.methods.base", "ClientAlgorithm", "fedweave.core.client"),
        ("fedweave.methods.base", "ServerContext", "fedweave.core.strategy"),
        ("fedweave.methods.base", "MergeStrategy", "fedweave.methods.merge"),
        ("fedweave.sim.engine", "Observer", "fedweave.core.observer"),
        ("fedweave.sim.state_store", "ClientStateStore", "fedweave.core.state_store"),
        ("fedweave.tasks", "Task", "fedweave.core.task"),
        ("fedweave.threats.pgd", "pgd_attack", "fedweave.models.adversarial"),
        ("fedweave.sim.executors", "SerialExecutor", "fedweave.sim.executor_base"),
    ]
    for old, name, new in pairs:
        assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name), (old, name)
    assert importlib.import_module("fedweave.lm") is importlib.import_module("fedweave.tasks.language_model")
    assert importlib.import_module("fedweave.restoration") is importlib.import_module("fedweave.tasks.restoration")


def test_a_pickle_naming_the_old_state_store_path_loads():
    """Checkpoints written before the move name fedweave.sim.state_store.SpilledState."""
    from fedweave.core.state_store import SpilledState

    new = pickle.dumps(SpilledState("clients-0.pt", 7), protocol=2)  # protocol 2: module names as plain text
    assert b"fedweave.core.state_store" in new
    old = new.replace(b"fedweave.core.state_store", b"fedweave.sim.state_store")
    ref = pickle.loads(old)
    assert type(ref) is SpilledState and (ref.path, ref.key) == ("clients-0.pt", 7)
