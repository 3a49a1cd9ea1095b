"""A newcomer's first hour: what `fedweave models` lists, keys that do not apply, and the
example configs that must run without a warning."""

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.config import ConfigWarning, inapplicable_keys, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_models_lists_every_model_the_docs_name():
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    names = {line.split()[0] for line in res.output.splitlines() if line and not line.startswith(" ")}
    assert {"logistic", "mlp", "mlp_norm", "cnn", "lenet5", "resnet", "srnet", "transformer", "ssf_pool",
            "module:factory"} <= names, names


@pytest.mark.parametrize("overrides,key", [
    (["data.partition.kind=iid", "data.partition.alpha=0.1"], "data.partition.alpha"),
    (["data.partition.kind=dirichlet", "data.partition.shards_per_client=3"], "data.partition.shards_per_client"),
    (["schedule.buffer_size=5"], "schedule.buffer_size"),
    (["schedule.max_staleness=3"], "schedule.max_staleness"),
    (["system.sigma=2.0"], "system.sigma"),
    (["client.lr_min=0.01"], "client.lr_min"),
])
def test_a_key_that_does_not_apply_is_named_with_what_would_use_it(overrides, key):
    problems = inapplicable_keys(load_config(None, overrides))
    assert len(problems) == 1 and problems[0].startswith(f"{key}=") and "used only with" in problems[0]


def test_keys_that_apply_or_keep_their_default_are_quiet():
    assert inapplicable_keys(load_config(None, ["data.partition.kind=dirichlet", "data.partition.alpha=0.1"])) == []
    assert inapplicable_keys(load_config(None, ["data.partition.kind=iid"])) == []  # alpha at its default


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_have_no_key_without_effect(path):
    assert inapplicable_keys(load_config(path)) == []


def test_the_warning_reaches_python_and_the_command_line(tmp_path):
    from fedweave import build_experiment

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_experiment(load_config(None, ["data.partition.kind=iid", "data.partition.alpha=0.1",
                                            "data.partition.num_clients=4", "schedule.clients_per_round=2"]))
    assert [w.category for w in caught if issubclass(w.category, ConfigWarning)] == [ConfigWarning]
