"""natkit's imports point down: every module has a layer, and nothing imports in a circle.

import-linter (run by .ci/run) checks the layers contract in pyproject.toml on the
imports it can read. These tests add what it cannot see: that no module of natkit
was left out of the contract, and the import the plugin host makes by name
(``importlib.import_module("natkit.builtin")``), with which a cycle through the
built-in components would close.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import natkit
from natkit.plugins import BUILTIN_MODULE

ROOT = Path(__file__).resolve().parents[1]
# imports made by name at run time, which no static reader sees
DYNAMIC_IMPORTS = {("natkit.plugins", BUILTIN_MODULE)}


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["id"] == "natkit-layers")


def _graph(*packages: str) -> dict[str, set[str]]:
    graph = grimp.build_graph(*packages, include_external_packages=False)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    for importer, imported in DYNAMIC_IMPORTS:
        if importer in edges:
            edges[importer].add(imported)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges) + 100))
    try:
        for v in sorted(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("packages", [("natkit",), ("benchmarks",)])
def test_no_module_imports_in_a_circle_counting_imports_by_name_and_for_types(packages):
    assert cycles(_graph(*packages)) == []


def test_the_plugin_host_loads_the_builtins_by_the_name_this_test_adds():
    assert BUILTIN_MODULE == "natkit.builtin"


def test_every_module_of_natkit_has_a_layer():
    layered = {name.strip() for line in _contract()["layers"]
               for name in line.replace(":", "|").split("|")}
    top = {m.split(".")[1] for m in _graph("natkit") if m.count(".") >= 1}
    assert top - layered == set(), "add these modules to the layers contract in pyproject.toml"
    assert layered - top == set(), "the layers contract names modules that do not exist"


def test_no_module_of_natkit_imports_the_package_root():
    # natkit/__init__ sits above every layer (it loads the plugin host); a module that
    # imported it would close a circle through it
    importers = {m for m, imported in _graph("natkit").items() if "natkit" in imported}
    assert importers == set()


def test_no_module_of_natkit_is_over_400_lines():
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for path in Path(natkit.__file__).parent.rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 400} == {}
