"""The documentation matches the code.

* docs/configuration.md is exactly what docs/gen_config_reference.py generates, and the
  README's method table is current (a config or registry change without regenerating
  fails here, with the command to run);
* every registered method appears in README.md;
* every example config validates, and builds where its data needs no files;
* the worked example of docs/howto/add-a-method.md runs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import fedweave
from fedweave.config import Config
from fedweave.methods import registered

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT / "docs" / "gen_config_reference.py"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# sources that need no files and no network: examples using them are built too
SELF_CONTAINED = {"digits", "synthetic", "mnist5k", "mnist1d"}


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", GEN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configuration_reference_is_current():
    gen = _generator()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen.config_reference(), (
        f"docs/configuration.md is out of date with fedweave.config or the registries; regenerate it with "
        f"`{gen.REGEN}` and commit the result."
    )


def test_every_config_key_is_described():
    gen = _generator()
    missing = gen.missing_descriptions()
    assert not missing, (
        f"config keys without a description: {', '.join(missing)}. Add Field(description=...) in "
        f"src/fedweave/config.py (or an entry in SUPPLEMENT in docs/gen_config_reference.py), then run `{gen.REGEN}`."
    )


def test_readme_method_table_is_current():
    gen = _generator()
    readme = (ROOT / "README.md").read_text()
    assert gen.methods_table() in readme, f"README.md's method table is stale; run `{gen.REGEN}`."


def test_every_registered_method_is_in_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in registered() if not re.search(rf"`{re.escape(name)}`", readme)]
    assert not missing, f"methods missing from README.md: {', '.join(missing)}; run `{_generator().REGEN}`."


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "fedprox-dirichlet.yaml", "scaffold-shards.yaml", "fedadam-synthetic.yaml"} <= names


def test_quickstart_example_is_the_defaults():
    cfg = fedweave.load_config(ROOT / "examples" / "quickstart.yaml")
    assert cfg.to_dict() == Config().to_dict(), (
        "examples/quickstart.yaml no longer equals the built-in defaults; update it to the values of "
        "`fedweave.config.Config().to_yaml()`."
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_and_builds(path):
    cfg = fedweave.load_config(path)
    if cfg.data.dataset in SELF_CONTAINED:
        exp = fedweave.build_experiment(cfg)
        assert exp.data.num_clients >= cfg.schedule.clients_per_round or cfg.schedule.sampling == "poisson"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["docs/howto/add-a-method.md", "README.md"])
def test_method_examples_run(doc, tmp_path):
    """The worked examples register methods that really run (each document in isolation)."""
    from fedweave.methods import registry, stages

    path = ROOT / doc
    marker = "doc-test: method" if doc != "README.md" else "register(MethodInfo("
    blocks = [b for b in _python_blocks(path) if marker in b]
    assert blocks, f"{doc} lost its worked method example"
    registered()  # load every real method first, so that the snapshot below holds them
    saved = [(table, dict(table)) for table in (registry._REGISTRY, stages.WEIGHTINGS, stages.COMBINERS,
                                                 stages.STAGE_PARAMS)]
    try:
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, doc, "exec"), namespace)
        added = sorted(set(registry._REGISTRY) - set(saved[0][1]))
        assert added, f"the example in {doc} registered no method"
        for name in added:
            result = fedweave.run(
                {"data": {"partition": {"num_clients": 5}}, "model": {"hidden": [16]},
                 "client": {"epochs": 1}, "schedule": {"rounds": 2, "clients_per_round": 3},
                 "method": {"name": name}},
                out=tmp_path / name,
            )
            assert result.status == "completed", name
    finally:
        for table, before in saved:
            table.clear()
            table.update(before)


def test_add_a_method_walkthrough_test_runs(tmp_path, tiny):
    """The test that docs/howto/add-a-method.md tells a contributor to write sits where
    pytest collects it, and passes against the walk-through's method."""
    from fedweave.methods import registry, stages

    path = ROOT / "docs" / "howto" / "add-a-method.md"
    blocks = _python_blocks(path)
    (test_block,) = [b for b in blocks if "doc-test: test" in b]
    target = re.match(r"# (\S+)", test_block).group(1)
    assert (ROOT / target).parent.is_dir() and re.fullmatch(r"tests/test_\w+\.py", target), target
    registered()
    saved = [(table, dict(table)) for table in (registry._REGISTRY, stages.WEIGHTINGS, stages.COMBINERS,
                                                 stages.STAGE_PARAMS)]
    try:
        namespace: dict = {}
        for block in blocks:
            if "doc-test: method" in block:
                exec(compile(block, str(path), "exec"), namespace)
        exec(compile(test_block, target, "exec"), namespace)
        tests = {k: v for k, v in namespace.items() if k.startswith("test_")}
        assert len(tests) == 2, sorted(tests)
        namespace["test_inverse_loss_weights_by_size_over_loss"]()
        namespace["test_inverse_loss_runs"](tmp_path, tiny)
    finally:
        for table, before in saved:
            table.clear()
            table.update(before)
