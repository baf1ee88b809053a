"""The package's import graph has no cycle (issue 16: no upward imports, no loops).

Why a test: a loop between modules is a layering mistake that nothing else reports — Python
copes with it as long as the names happen to exist when a module half-imported asks for
them, and a later, innocent reordering turns it into an ``ImportError`` at a user's import.
The graph is read from the source with :mod:`ast` (nothing is imported): an edge is an
import at module level or under ``if TYPE_CHECKING:`` (a type annotation is a dependency
too: the pure ``breaker.py`` annotated with a fleet type was one such loop). Imports inside
functions are left out: they are the deliberate way to defer an optional dependency (the
Redis store, NVML) until it is asked for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import langchain_contextharbor

PACKAGE = "langchain_contextharbor"
ROOT = Path(langchain_contextharbor.__file__).parent

KNOWN_CYCLES: frozenset[tuple[str, ...]] = frozenset()
"""Cycles tolerated for now, each as :func:`_canonical` writes it. Empty, and meant to stay so:
a new entry needs the reason it cannot be broken yet next to it."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported (or read by a type checker): module level,
    in ``if``/``try`` blocks at that level (``if TYPE_CHECKING:``, ``try: import x``), never
    inside a function or class body."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level_imports(block)
            for handler in node.handlers:
                yield from _top_level_imports(handler.body)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports at import time (or under TYPE_CHECKING).

    ``from pkg import name`` counts as an edge to ``pkg.name`` when that is a module (a
    submodule import), else to ``pkg`` itself. An import of a submodule also runs its parent
    packages' ``__init__``, but that edge is left out: every module would otherwise depend
    on the package's ``__init__``, which imports (nearly) everything by design.
    """
    paths = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _top_level_imports(tree.body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(module, is_package, node)
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in paths else source
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in paths:  # "pkg.mod.attr" -> "pkg.mod"
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def _canonical(cycle: list[str]) -> tuple[str, ...]:
    """A cycle written from its smallest module, so the same loop always reads the same."""
    start = cycle.index(min(cycle))
    return tuple(cycle[start:] + cycle[:start])


def find_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle reachable by a depth-first walk, one path per back edge."""
    cycles: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.add(_canonical(path[path.index(nxt) :]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _describe(cycle: tuple[str, ...]) -> str:
    names = [m.removeprefix(PACKAGE + ".") or PACKAGE for m in (*cycle, cycle[0])]
    return " -> ".join(names)


def test_the_package_has_no_import_cycle() -> None:
    cycles = find_cycles(import_graph()) - KNOWN_CYCLES
    assert not cycles, "import cycles: " + "; ".join(sorted(_describe(c) for c in cycles))


def test_the_graph_sees_module_level_and_type_checking_imports_only(tmp_path: Path) -> None:
    """The reader itself: a loop through TYPE_CHECKING counts, one through a function does
    not, and a named cycle reads the same from wherever the walk entered it."""
    assert _canonical(["b", "c", "a"]) == ("a", "b", "c")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert find_cycles({"a": {"b"}, "b": set()}) == set()
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from x import T\n"
        "try:\n    import y\nexcept ImportError:\n    import z\n"
        "def f():\n    import w\n"
        "class C:\n    import v\n"
    )
    found = [
        n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
        for n in _top_level_imports(ast.parse(source).body)
    ]
    assert found == ["typing", "x", "y", "z"]


def test_the_graph_knows_the_package() -> None:
    """A sanity floor: the reader finds the modules and the edges everyone knows exist."""
    graph = import_graph()
    assert f"{PACKAGE}.routing" in graph[f"{PACKAGE}._router"]
    assert f"{PACKAGE}.fleet" in graph[f"{PACKAGE}._fleet_setup"]
    assert f"{PACKAGE}.testing._endpoints" in graph[f"{PACKAGE}.testing.server"]


def test_no_upward_imports_where_issue_16_found_them() -> None:
    """The pure breaker imports nothing of the package; the fleet protocol imports neither
    its Redis implementation nor the factory that builds it; the stand-in's endpoints, wire
    and exchange do not import the server that dispatches to them."""
    graph = import_graph()
    assert graph[f"{PACKAGE}.breaker"] == set()
    assert not graph[f"{PACKAGE}.fleet"] & {f"{PACKAGE}._fleet_redis", f"{PACKAGE}._fleet_setup"}
    for module in ("_endpoints", "_exchange", "_wire", "_residency", "_slots", "_values"):
        assert f"{PACKAGE}.testing.server" not in graph[f"{PACKAGE}.testing.{module}"], module


if __name__ == "__main__":  # pragma: no cover - a quick look at the graph
    for c in sorted(find_cycles(import_graph())):
        print(_describe(c))
    pytest.main([__file__])
