"""Configuration: defaults, YAML, --set overrides and validation messages (fedweave.config)."""

from __future__ import annotations

import pytest
import yaml

from fedweave import ConfigError, build_experiment
from fedweave.config import Config, load_config, parse_overrides
from fedweave.methods import build_method


def test_defaults_validate_to_the_quickstart():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.dataset == "digits"
    assert cfg.data.partition.kind == "dirichlet"
    assert cfg.data.partition.num_clients == 20
    assert cfg.data.partition.alpha == 0.5
    assert cfg.model.name == "mlp"
    assert cfg.method.name == "fedavg"
    assert cfg.schedule.clients_per_round == 10
    assert cfg.schedule.rounds == 30
    # the defaults also build (method, data, model all valid together)
    exp = build_experiment(cfg)
    assert exp.data.num_clients == 20


def test_none_and_empty_dict_equal_defaults():
    assert load_config(None).to_dict() == load_config({}).to_dict() == Config().to_dict()


def test_yaml_file_loading(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: fromfile\n"
        "data:\n  partition:\n    num_clients: 7\n    kind: iid\n"
        "client:\n  lr: 0.05\n"
        "model:\n  hidden: [32, 8]\n"
    )
    cfg = load_config(path)
    assert cfg.name == "fromfile"
    assert cfg.data.partition.num_clients == 7
    assert cfg.data.partition.kind == "iid"
    assert cfg.client.lr == 0.05
    assert cfg.model.hidden == [32, 8]
    # untouched keys keep their defaults
    assert cfg.data.partition.alpha == 0.5
    assert cfg.client.batch_size == 32
    # also by str path
    assert load_config(str(path)).to_dict() == cfg.to_dict()


def test_empty_yaml_file_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path).to_dict() == Config().to_dict()


def test_yaml_not_a_mapping_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_invalid_yaml_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_yaml_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_round_trip():
    cfg = load_config(None, ["model.hidden=[8]", "client.lr=0.3", "eval.target=0.9"])
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again.to_dict() == cfg.to_dict()


def test_overrides_dotted_keys_and_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("client:\n  lr: 0.05\n  batch_size: 16\neval:\n  target: 0.8\n")
    cfg = load_config(
        path,
        [
            "client.lr=0.25",
            "model.hidden=[64, 32]",
            "eval.target=null",
            "data.partition.alpha=0.1",
            "client.grad_clip=1.5",
            "method.name=fedprox",
            "client.mu=0.001",
            "model.roles={'3.*': personal}",
        ],
    )
    assert cfg.client.lr == 0.25 and isinstance(cfg.client.lr, float)
    assert cfg.client.batch_size == 16  # kept from the file (deep merge)
    assert cfg.model.hidden == [64, 32]
    assert cfg.eval.target is None
    assert cfg.data.partition.alpha == 0.1
    assert cfg.data.partition.num_clients == 20
    assert cfg.client.grad_clip == 1.5
    assert cfg.method.name == "fedprox"
    assert cfg.client.mu == 0.001
    assert cfg.model.roles == {"3.*": "personal"}


def test_override_exponent_float_and_later_wins():
    cfg = load_config({"client": {"lr": 0.5}}, ["client.lr=1e-3", "schedule.rounds=4", "schedule.rounds=6"])
    assert cfg.client.lr == pytest.approx(1e-3)
    assert cfg.schedule.rounds == 6


def test_parse_overrides_structure():
    assert parse_overrides(["a.b.c=1", "a.d=[1, 2]", "e=x", "a.b.f=null"]) == {
        "a": {"b": {"c": 1, "f": None}, "d": [1, 2]},
        "e": "x",
    }
    assert parse_overrides(["k="]) == {"k": None}


@pytest.mark.parametrize("item", ["client.lr", "noequals", ""])
def test_override_without_equals_rejected(item):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([item])


@pytest.mark.parametrize("item", ["client..lr=1", ".lr=1", "=3"])
def test_override_empty_key_part_rejected(item):
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides([item])


def test_override_bad_yaml_value_rejected():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["model.hidden=[1, 2"])


@pytest.mark.parametrize(
    "raw, key, allowed",
    [
        ({"foo": 1}, "'foo'", ["seed", "data", "schedule", "output"]),
        ({"client": {"lrr": 0.1}}, "'client.lrr'", ["lr", "lr_schedule", "batch_size", "optimizer"]),
        ({"data": {"partition": {"alpah": 0.1}}}, "'data.partition.alpah'",
         ["alpha", "num_clients", "kind"]),
        ({"schedule": {"round": 3}}, "'schedule.round'", ["rounds", "clients_per_round"]),
    ],
)
def test_unknown_keys_rejected_listing_allowed(raw, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    msg = str(err.value)
    assert "unknown key" in msg
    assert key in msg
    for a in allowed:
        assert a in msg


def test_unknown_key_via_override_rejected():
    with pytest.raises(ConfigError, match="unknown key 'eval.evry'"):
        load_config(None, ["eval.evry=2"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.partition.alpha=0", "data.partition.alpha"),
        ("data.partition.alpha=-1", "data.partition.alpha"),
        ("client.lr=-0.1", "client.lr"),
        ("client.lr=0", "client.lr"),
        ("schedule.rounds=0", "schedule.rounds"),
        ("data.test_fraction=1.0", "data.test_fraction"),
        ("client.momentum=1.0", "client.momentum"),
        ("model.hidden=[16, 0]", "model.hidden"),
        ("client.optimizer=rmsprop", "client.optimizer"),
        ("schedule.sampling=poisson", "schedule.sampling_rate"),
        ("method.server_lr=-1", "method.server_lr"),
        ("data.partition.kind=zipf", "data.partition.kind"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_clients_per_round_above_num_clients_rejected_at_build():
    cfg = load_config(None, ["data.partition.num_clients=4", "schedule.clients_per_round=5"])
    with pytest.raises(ConfigError) as err:
        build_experiment(cfg)
    msg = str(err.value)
    assert "schedule.clients_per_round" in msg
    assert "4" in msg


def test_poisson_ignores_clients_per_round_bound():
    cfg = load_config(None, ["data.partition.num_clients=4", "schedule.clients_per_round=5",
                             "schedule.sampling=poisson", "schedule.sampling_rate=0.5"])
    build_experiment(cfg)  # no error: the cohort size comes from the rate


@pytest.mark.parametrize(
    "section, name, kind, allowed",
    [
        ("method", "fedavgg", "method", ["fedavg", "fedprox", "scaffold", "fednova", "fedadam"]),
        ("data", "mnistt", "dataset", ["digits", "mnist", "synthetic"]),
        ("model", "vit", "model", ["mlp", "logistic", "cnn", "resnet"]),
    ],
)
def test_unknown_names_list_allowed(section, name, kind, allowed):
    key = {"method": "method.name", "data": "data.dataset", "model": "model.name"}[section]
    cfg = load_config(None, [f"{key}={name}"])
    with pytest.raises(ConfigError) as err:
        build_experiment(cfg)
    msg = str(err.value)
    assert f"Unknown {kind} {name!r}" in msg
    assert "Allowed" in msg
    for a in allowed:
        assert a in msg


@pytest.mark.parametrize("stage, name", [("weighting", "nosuchweighting"), ("combiner", "nosuchcombiner"), ("server_opt", "nosuchopt")])
def test_unknown_stage_names_list_allowed(stage, name):
    cfg = load_config(None, [f"method.{stage}={name}"])
    with pytest.raises(ConfigError, match=f"Unknown .*{name!r}.*Allowed"):
        build_method(cfg)


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fedadam", "scaffold", "fednova"])
def test_unknown_method_params_rejected(method):
    cfg = load_config(None, [f"method.name={method}", "method.foo=1"])
    with pytest.raises(ConfigError) as err:
        build_method(cfg)
    assert "method.foo" in str(err.value)
    assert "unknown parameter" in str(err.value)


def test_server_momentum_with_adam_rejected():
    cfg = load_config(None, ["method.name=fedavg", "method.server_opt=adam", "method.server_momentum=0.9"])
    with pytest.raises(ConfigError, match="server_momentum"):
        build_method(cfg)
    cfg = load_config(None, ["method.name=fedadam", "method.server_momentum=0.9"])
    with pytest.raises(ConfigError, match="server_momentum"):
        build_method(cfg)


def test_server_momentum_with_sgd_accepted():
    cfg = load_config(None, ["method.server_opt=sgd", "method.server_momentum=0.5", "method.server_lr=0.7"])
    strategy, _ = build_method(cfg)
    assert strategy.server_opt.momentum == 0.5
    assert strategy.server_opt.lr == 0.7


def test_server_lr_with_replace_rejected():
    with pytest.raises(ConfigError, match="server_lr"):
        build_method(load_config(None, ["method.server_lr=0.5"]))


@pytest.mark.parametrize("method", ["scaffold", "fednova"])
@pytest.mark.parametrize("stage", ["combiner=mean", "weighting=size", "server_opt=adam", "server_momentum=0.9"])
def test_stage_keys_on_full_strategies_rejected(method, stage):
    cfg = load_config(None, [f"method.name={method}", f"method.{stage}"])
    with pytest.raises(ConfigError) as err:
        build_method(cfg)
    assert f"method.{stage.split('=')[0]}" in str(err.value)


@pytest.mark.parametrize("method", ["scaffold", "fednova"])
def test_adam_client_rejected_for_scaffold_and_fednova(method):
    with pytest.raises(ConfigError, match="sgd"):
        build_method(load_config(None, [f"method.name={method}", "client.optimizer=adam"]))


def test_fednova_prox_with_momentum_rejected():
    cfg = load_config(None, ["method.name=fednova", "client.objective=prox", "client.mu=0.1", "client.momentum=0.5"])
    with pytest.raises(ConfigError, match="momentum"):
        build_method(cfg)


def test_bad_config_creates_no_run_directory(tmp_path):
    import fedweave

    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        fedweave.run(None, out=out, overrides=["method.name=nope"])
    assert not out.exists()
