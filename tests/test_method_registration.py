"""A method owns everything about itself: one module per registered name, its set-up hook
and its needs on its registration, its threat special cases in its own module, and no
code outside ``fedweave.methods`` naming a method."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch

import fedweave
from fedweave.config import load_config
from fedweave.errors import ConfigError
from fedweave.experiment import build_experiment, extensions
from fedweave.messages import Update
from fedweave.params import FlatModel
from fedweave.methods import ClientAlgorithm, MethodInfo, Preset, Strategy, build_method, get_method, registered
from fedweave.methods import registry
from fedweave.methods.frl import RankUpdate
from fedweave.methods.needs import MethodNeeds, client_needs, method_needs, strategy_needs
from fedweave.methods.threat_adapter import ThreatAdapter
from fedweave.threats.attacks import CollusionHook, make_plan

SRC = Path(fedweave.__file__).parent


# -- one module per method ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_method_has_a_module_of_its_name_that_registers_it(name):
    info = get_method(name)
    module = importlib.import_module(f"fedweave.methods.{name}")
    assert any(value is info for value in vars(module).values()), f"fedweave.methods.{name} does not register {name!r}"
    doc = module.__doc__ or ""
    # the citation's first word (an author, or the title) and its year, if it has one
    year = re.findall(r"(?:19|20)\d\d", info.citation)[-1:]
    first = re.split(r"[ ,&/]", info.citation)[0]
    assert first.lower() in doc.lower() and all(y in doc for y in year), f"{name}'s docstring does not cite {info.citation!r}"


# -- nothing outside methods/ names a method ----------------------------------------------

# Each allowance names the file, the literal and why it stays.
ALLOWED = {
    # the config schema's default method: a default has to name something
    ("config.py", "fedavg"),
    # FedweaveStrategy(method="fedavg") and flower_support(method="fedavg"): the same default
    ("integrations/flower.py", "fedavg"),
}


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _exports(tree) -> set[int]:
    """String constants of ``__all__``: the module's own function names (``aggregate``
    exports functions named median, krum... after the rules, not after the methods)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            out |= {id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return out


def method_mentions(root: Path, names: set[str]) -> list[str]:
    """``file:line: what`` for every string literal equal to a method name, or naming a
    method module, and every import of a method module, under ``root`` outside methods/."""
    module_ref = re.compile(r"\bmethods\.(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("methods/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree) | _exports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if (node.value in names and (rel, node.value) not in ALLOWED) or module_ref.search(node.value):
                    found.append(f"{rel}:{node.lineno}: string {node.value!r}")
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
                if any(module_ref.search(t) for t in targets):
                    found.append(f"{rel}:{node.lineno}: from {'.' * node.level}{mod} import ...")
            elif isinstance(node, ast.Import):
                found += [f"{rel}:{node.lineno}: import {a.name}" for a in node.names if module_ref.search(a.name)]
    return found


def test_nothing_outside_methods_names_a_method():
    offending = method_mentions(SRC, set(registered()))
    assert not offending, "code outside fedweave.methods names a method:\n" + "\n".join(offending)


def test_the_scan_finds_what_it_forbids(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "frl.py").write_text('NAME = "frl"\n')  # inside methods/: fine
    (tmp_path / "threats.py").write_text(
        '"""Docstrings may say frl."""\n'
        "from .methods.frl import FRLThreats\n"
        "from .methods import frl\n"
        "import fedweave.methods.krum\n"
        'if name == "frl":  # a comment may say frl\n'
        '    pass\n'
        'x = importlib.import_module("fedweave.methods.median")\n'
        '__all__ = ["krum"]\n'
    )
    found = method_mentions(tmp_path, {"frl", "krum", "median"})
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "5", "7"], found


# -- the set-up hook -------------------------------------------------------------------------


def test_extensions_run_model_then_method_then_privacy_then_threats():
    assert [f.__name__ for f in extensions()] == [
        "setup_model", "setup_method", "configure_privacy", "configure_attack", "configure_eavesdropper",
        "configure_robust_accuracy",
    ]


def test_the_method_setup_runs_before_privacy_and_the_attack_wrap_the_client(monkeypatch, tiny):
    seen = {}

    def setup(exp):
        seen["algorithm"] = type(exp.algorithm)
        seen["strategy"] = type(exp.strategy).__name__
        seen["hooks"] = len(exp.cohort_hooks)

    info = MethodInfo(name="probe", summary="test", citation="-", preset=Preset(), setup=setup)
    monkeypatch.setitem(registry._REGISTRY, "probe", info)
    cfg = load_config(tiny({"method": {"name": "probe"}, "privacy": {"dp": {"clip": 1.0, "noise_multiplier": 0.5}},
                            "attack": {"kind": "alie", "fraction": 0.4},
                            "schedule": {"sampling": "poisson", "sampling_rate": 0.5}}))
    exp = build_experiment(cfg)
    assert seen == {"algorithm": ClientAlgorithm, "strategy": "StagedStrategy", "hooks": 0}
    assert type(exp.strategy).__name__ == "DPStrategy" and len(exp.cohort_hooks) == 1


# -- needs --------------------------------------------------------------------------------


class _Loss(ClientAlgorithm):
    def loss_fn(self, job, worker):
        return None


class _Stateful(ClientAlgorithm):
    stateful = True


class _Personal(ClientAlgorithm):
    def personalize(self, model, broadcast, state, initial):
        pass


class _FullModel(ClientAlgorithm):
    upload_full_model = True


def test_client_needs_are_derived_from_the_overridden_hooks():
    assert client_needs(ClientAlgorithm()) == MethodNeeds()
    assert client_needs(_FullModel()) == MethodNeeds()  # only changes what is sent
    assert client_needs(_Loss()).client_logic == "_Loss overrides loss_fn"
    assert client_needs(_Stateful()) == MethodNeeds(client_state=True)
    assert client_needs(_Personal()) == MethodNeeds(personal_model=True)
    assert not client_needs(_FullModel()).client_side and client_needs(_Personal()).client_side


def test_wrappers_are_client_logic_whatever_they_wrap():
    from fedweave.methods.stages import WithStageClients
    from fedweave.methods.feddisco import LabelHistogramClient
    from fedweave.privacy.dp import DPClient

    # DP's wrapper delegates unknown attributes to the algorithm; its own train still counts
    assert client_needs(DPClient(ClientAlgorithm(), 1.0)).client_logic.startswith("DPClient overrides train")
    staged = WithStageClients(ClientAlgorithm(), [LabelHistogramClient()])
    assert client_needs(staged) == MethodNeeds(upload=frozenset({"label_hist"}))
    assert client_needs(DPClient(staged, 1.0)).client_side


def test_a_declaration_replaces_the_derivation_of_its_part():
    class Declared(_Loss):
        needs = {"payload:hist"}

    assert client_needs(Declared()) == MethodNeeds(upload=frozenset({"hist"}))

    class Broadcasting(Strategy):
        def broadcast_payload(self, state, ctx):
            return {}

    assert strategy_needs(Broadcasting()).broadcast == "Broadcasting overrides broadcast_payload"
    Broadcasting.needs = MethodNeeds(server_data=True)
    assert strategy_needs(Broadcasting()) == MethodNeeds(server_data=True)


def test_names_round_trip():
    needs = MethodNeeds(client_logic="", client_state=True, upload=frozenset({"a"}), broadcast="", server_data=True,
                        server_model=True, server_training=True, num_steps=True, round_lr=True, personal_model=True,
                        mid_training_fetch=True, other=frozenset({"x"}))
    names = {"client_logic", "client_state", "payload:a", "broadcast", "server_data", "model_factory",
             "server_training", "num_steps", "round_lr", "personal_model", "mid_training_fetch", "x"}
    assert needs.names() == names and MethodNeeds.from_names(names) == needs
    assert (MethodNeeds(client_logic="a") | MethodNeeds(client_logic="b", num_steps=True)) == MethodNeeds(
        client_logic="a", num_steps=True)


def test_registered_methods_needs(tiny):
    def built(name, **extra):
        cfg = load_config(tiny({"method": {"name": name}, **extra}))
        return method_needs(get_method(name), *build_method(cfg))

    assert built("fedavg") == MethodNeeds()
    assert built("fednova").names() == {"num_steps", "round_lr"}
    assert built("feddisco").names() == {"payload:label_hist"}
    assert built("fedlaw", data={"server_fraction": 0.1}).names() == {"server_data", "model_factory"}
    assert get_method("fltrust").needs.names() == {"server_training"}
    assert built("scaffold").names() == {"broadcast", "client_logic", "client_state"}
    assert built("ditto").names() == {"client_logic", "client_state", "personal_model"}


def test_flower_and_the_vectorized_executor_read_the_registration(monkeypatch, tiny):
    pytest.importorskip("flwr")
    from fedweave.integrations.flower import UnsupportedMethodError, flower_support
    from fedweave.sim.vectorized import unsupported_reason

    info = MethodInfo(name="probe", summary="test", citation="-", preset=Preset(),
                      needs=MethodNeeds(server_data=True))
    monkeypatch.setitem(registry._REGISTRY, "probe", info)
    with pytest.raises(UnsupportedMethodError, match="server-held labelled data set"):
        flower_support("probe")  # declared needs are checked before the method is built
    assert flower_support("probe", server_data=True).supported

    info = MethodInfo(name="probe", summary="test", citation="-", preset=Preset(client=lambda c, p: _Personal()))
    monkeypatch.setitem(registry._REGISTRY, "probe", info)
    exp = build_experiment(load_config(tiny({"method": {"name": "probe"}})))
    flat = FlatModel(exp.model_factory(), exp.roles)
    assert unsupported_reason(exp.worker_setup(), flat, "sgd") == "the method's client algorithm (_Personal) customises training"


# -- threats through the registration's adapter ------------------------------------------


def _rank(cid: int, ranking: list[int]) -> RankUpdate:
    return RankUpdate(cid, 0, None, None, 1, 1, {}, {"ranking": [torch.tensor(ranking)]})


@pytest.mark.parametrize("sees_benign, expected", [
    # the attacker's own ranking [0, 1, 2] reversed
    (False, [2, 1, 0]),
    # benign rankings [0, 1, 2] and [1, 0, 2]: rank positions sum to 1, 1, 4 for edges
    # 0, 1, 2; by decreasing sum (ties to the lower id): [2, 0, 1]
    (True, [2, 0, 1]),
])
def test_frl_sign_flip_is_its_reversed_ranking(tiny, sees_benign, expected):
    cfg = load_config(tiny({"method": {"name": "frl"},
                            "attack": {"kind": "sign_flip", "fraction": 0.2, "sees_benign": sees_benign}}))
    from fedweave.data.federated import build_federated

    plan = make_plan(cfg, build_federated(cfg.data), "frl")
    attacker = plan.malicious[0]
    others = [c for c in range(5) if c != attacker][:2]
    updates = [_rank(others[0], [0, 1, 2]), _rank(attacker, [0, 1, 2]), _rank(others[1], [1, 0, 2])]
    out = CollusionHook(plan, get_method("frl").threats)(updates, None, 0, None)
    assert out[1].payload["ranking"][0].tolist() == expected
    assert out[0] is updates[0] and out[2] is updates[2]


def test_the_default_adapter_leaves_the_delta_attacks_alone():
    adapter = ThreatAdapter()
    updates = [Update(0, 0, torch.ones(2), None, 1, 1, {})]
    assert adapter.collude("alie", updates, [0], [0]) is None
    assert adapter.attack_refusal("gaussian") is None and adapter.eavesdropper_refusal() is None


def test_frl_refusals_come_from_its_adapter(tiny):
    with pytest.raises(ConfigError, match="FRL clients upload rankings, not updates: attack.kind=gaussian"):
        build_experiment(load_config(tiny({"method": {"name": "frl"}, "attack": {"kind": "gaussian", "fraction": 0.2}})))
    with pytest.raises(ConfigError, match="FRL uploads rankings instead"):
        build_experiment(load_config(tiny({"method": {"name": "frl"}, "eavesdropper": {"probability": 0.5}})))
    with pytest.raises(ConfigError, match=r"applies to alie, minmax and minsum\.$"):
        build_experiment(load_config(tiny({"attack": {"kind": "gaussian", "fraction": 0.2, "sees_benign": True}})))
