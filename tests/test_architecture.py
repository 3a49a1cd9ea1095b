"""The layering of ``src/fedweave``: no import cycle, and no import from a lower layer to a
higher one (the layers of docs/architecture.md, "Layers and where things go").

The import graph is read from the source with :mod:`ast`, so it sees every import a
module can execute: at module level, inside functions (a lazy import that hides a
cycle is still a cycle) and under ``TYPE_CHECKING``. Relative imports are resolved.
Importing ``a.b.c`` also runs the ``__init__`` of ``a.b``, so an import counts as an
edge to each package above its target too, except the packages above the importer
itself (already running) and the root ``fedweave`` package (the public facade: Python
runs it before any submodule, which is no dependency of theirs); a package named
explicitly (``from . import name``) is an edge like any other. Imports built at run
time (``importlib.import_module(name)``) are invisible here: the methods package uses
one to load its own modules, which is a downward edge.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "fedweave"

#: Bottom to top. A module belongs to the layer of the longest package prefix listed for it
#: (the root package ``fedweave`` only to the top layer). A module may import from its own
#: layer and the layers below, never from one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # the contracts, and the local trainer that ClientAlgorithm runs; the old top-level
    # paths of the core modules are re-exports of it
    ("core", ("fedweave.core", "fedweave.train", "fedweave.step", "fedweave.errors", "fedweave.rng", "fedweave.params",
              "fedweave.messages")),
    # what a run reads and writes (the engine commits records and checkpoints through rundir);
    # importing the modules a config names (plugins)
    ("config", ("fedweave.config", "fedweave.rundir", "fedweave.plugins")),
    # pure maths: aggregation rules and server optimizers; fairness figures and summaries; wireless connectivity
    ("maths", ("fedweave.aggregate", "fedweave.metrics", "fedweave.wireless")),
    # data sources (register_source), partitions, splits; the model zoo (register_model)
    ("data and models", ("fedweave.data", "fedweave.models")),
    # task bundles (task + source + model), central pretraining for a task
    ("tasks", ("fedweave.tasks", "fedweave.lm", "fedweave.restoration", "fedweave.pretrain")),
    ("methods", ("fedweave.methods",)),
    ("privacy and threats", ("fedweave.privacy", "fedweave.threats")),
    ("simulation", ("fedweave.sim",)),
    # builds and runs experiments; what runs several of them
    ("experiment", ("fedweave.experiment", "fedweave.tracking", "fedweave.contributions")),
    # the deployed server and client build their experiment with build_experiment
    ("deployment and integrations", ("fedweave.deploy", "fedweave.integrations")),
    ("entry points", ("fedweave.cli", "fedweave.__main__", "fedweave.sweep", "fedweave.report", ROOT)),
]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}  ({self.where})"


def find_modules(src: Path, root: str = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``src/<root>``."""
    modules = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _known(name: str, modules) -> str | None:
    """``name`` if it is a module, else the nearest enclosing module (``a.b.attr`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(src: Path, root: str = ROOT) -> list[Edge]:
    modules = find_modules(src, root)
    edges: dict[tuple[str, str], Edge] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            for target in targets:
                target = _known(target, modules) if target.split(".")[0] == root else None
                if target is None:
                    continue
                mine = set(_ancestors(name))
                implied = [t for t in _ancestors(target) if t != root and t not in mine]
                for t in [target, *implied]:
                    if t == name:
                        continue
                    where = f"{path.relative_to(src)}:{node.lineno}"
                    edges.setdefault((name, t), Edge(name, t, where))
    return sorted(edges.values(), key=lambda e: (e.source, e.target))


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e.target)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str, layers=LAYERS) -> int | None:
    best, best_len = None, -1
    for level, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if prefix == ROOT:
                matches = module == ROOT
            else:
                matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best, best_len = level, len(prefix)
    return best


def upward(edges: list[Edge], layers=LAYERS) -> list[str]:
    out = []
    for e in edges:
        a, b = layer_of(e.source, layers), layer_of(e.target, layers)
        if a is not None and b is not None and b > a:
            out.append(f"{e}: layer '{layers[a][0]}' imports layer '{layers[b][0]}'")
    return out


def _cycle_report(edges: list[Edge]) -> list[str]:
    lines = []
    for component in cycles(edges):
        members = set(component)
        lines.append("cycle among " + ", ".join(component) + ":")
        lines += [f"    {e}" for e in edges if e.source in members and e.target in members]
    return lines


# -- the rules, on fedweave itself -----------------------------------------------------------------


def test_every_module_has_a_layer():
    missing = [m for m in find_modules(SRC) if layer_of(m) is None]
    assert not missing, (
        "These modules belong to no layer; add their package to LAYERS in tests/test_architecture.py and to "
        "'Layers and where things go' in docs/architecture.md:\n  " + "\n  ".join(missing))


def test_no_import_cycles():
    report = _cycle_report(import_edges(SRC))
    assert not report, "Import cycles (function-level imports included):\n" + "\n".join(report)


def test_no_import_from_a_higher_layer():
    report = upward(import_edges(SRC))
    assert not report, ("Imports from a lower layer to a higher one (the layers are in docs/architecture.md):\n"
                        + "\n".join(report))


def test_layers_match_the_documentation():
    """docs/architecture.md names the same layers, in the same order."""
    text = (SRC.parent / "docs" / "architecture.md").read_text()
    section = text.split("## Layers and where things go", 1)[1].split("\n## ", 1)[0]
    positions = [section.find(f"**{name}**") for name, _ in LAYERS]
    assert all(p >= 0 for p in positions), [name for (name, _), p in zip(LAYERS, positions) if p < 0]
    assert positions == sorted(positions), "the layers are listed in another order in docs/architecture.md"


# -- the walker itself, on a package written for the purpose ---------------------------------------


@pytest.fixture
def toy(tmp_path):
    """pkg/low/a.py imports pkg.high.b inside a function, pkg/high/b.py imports ..low.a:
    a cycle hidden by a lazy import, and an upward edge."""
    files = {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    from pkg.high.b import g\n    return g\n",
        "pkg/low/c.py": "from . import a\nfrom .a import f\n",
        "pkg/high/__init__.py": "from .b import g\n",
        "pkg/high/b.py": "from ..low.a import f\ndef g():\n    return f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_walker_resolves_relative_lazy_and_package_imports(toy):
    edges = {(e.source, e.target) for e in import_edges(toy, "pkg")}
    assert edges == {
        ("pkg.low.a", "pkg.high.b"), ("pkg.low.a", "pkg.high"),  # lazy import, and the package it runs
        ("pkg.low.c", "pkg.low.a"),  # both `from . import a` and `from .a import f`
        ("pkg.high", "pkg.high.b"),
        ("pkg.high.b", "pkg.low.a"),  # `..low.a` from pkg.high.b; pkg.low's __init__ is an edge too
        ("pkg.high.b", "pkg.low"),
    }


def test_walker_reports_the_hidden_cycle_and_the_upward_import(toy):
    edges = import_edges(toy, "pkg")
    assert cycles(edges) == [["pkg.high", "pkg.high.b", "pkg.low.a"]]
    report = "\n".join(_cycle_report(edges))
    assert "pkg.low.a -> pkg.high.b  (pkg/low/a.py:2)" in report
    layers = [("low", ("pkg.low",)), ("high", ("pkg.high",))]
    assert upward(edges, layers) == [
        "pkg.low.a -> pkg.high  (pkg/low/a.py:2): layer 'low' imports layer 'high'",
        "pkg.low.a -> pkg.high.b  (pkg/low/a.py:2): layer 'low' imports layer 'high'",
    ]
