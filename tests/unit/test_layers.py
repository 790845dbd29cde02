"""The layer fence: which of tenantflow's modules may import which.

An ``ast`` walk over ``src/tenantflow`` (every import: at module level, inside functions and
under ``TYPE_CHECKING``, absolute and relative) pins the directions of ARCHITECTURE's layers:

* ``domain`` is pure: it imports ``errors`` and ``domain`` only;
* ``adapters`` implement the ports: they import ``ports``, ``domain``, ``errors`` and other
  adapters, nothing of ``engine``, ``api``, ``cli``;
* ``api`` and ``cli`` reach the adapters only through the composition (``tenantflow.adapters``,
  the package itself), never into an adapter module;
* ``engine`` reaches the adapters only where it composes, the edges listed below;
* ``selftest`` never imports ``cli`` (the CLI imports the selftest);
* no two modules import each other, directly or round a longer circle.

The edges that break the last two rules today are listed, with the reason, in
:data:`KNOWN_ENGINE_TO_ADAPTERS` and :data:`KNOWN_CIRCLE_EDGES`. Those lists only shrink: a new
edge fails the test, and so does a listed edge that no longer exists (delete it from the list:
that is how a rule is switched on for good). A package's own ``__init__`` is not counted as
imported by its submodules (Python runs it first, but nothing in it is used), and the root
package ``tenantflow`` is the public façade, imported by the CLI for the version only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# engine -> adapters: Engine.open and the Engine's default clock compose through the
# composition package (tenantflow.adapters: open_store, system_clock), lazily; no adapter
# module is imported by the engine. Delete the entry once the composition leaves the engine.
KNOWN_ENGINE_TO_ADAPTERS = frozenset(
    {
        ("tenantflow.engine.engine", "tenantflow.adapters"),
    }
)

# Every edge that lies on an import circle: none. The engine's circle (services built with
# the whole Engine, the execution side tied through the façade) is gone with the split of
# runtime.py and engine.py; no circle may come back.
KNOWN_CIRCLE_EDGES: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Import:
    """One import of a tenantflow module by another."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def modules(root: Path = SRC) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name (a package by its own)."""
    found: dict[str, Path] = {}
    for path in sorted((root / "tenantflow").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_in(
    source: str, module: str, is_package: bool, known: Mapping[str, Path]
) -> set[Import]:
    """The tenantflow modules that ``source`` (the text of ``module``) imports, anywhere in it.

    ``from a.b import c`` is an import of ``a.b.c`` when that is a module, else of ``a.b``; a
    name that is no module resolves to the nearest enclosing one."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[Import] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [name if name in known else base for name in names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("tenantflow"):
                found.add(Import(module, name, node.lineno))
    return found


def import_graph(root: Path = SRC) -> set[Import]:
    known = modules(root)
    return {
        edge
        for name, path in known.items()
        for edge in imports_in(path.read_text(), name, path.name == "__init__.py", known)
    }


def circle_edges(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges that lie on a circle: both ends in one strongly connected component
    (Tarjan's algorithm, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    component: dict[str, int] = {}
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = index[node]
                    if member == node:
                        break
    return {(a, b) for a, b in edges if component[a] == component[b]}


@pytest.fixture(scope="module")
def graph() -> set[Import]:
    return import_graph()


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _breaking(graph: set[Import], source: str, allowed: tuple[str, ...]) -> list[str]:
    return sorted(str(i) for i in graph if _in(i.source, source) and not _in(i.target, *allowed))


def test_domain_imports_only_errors_and_domain(graph: set[Import]) -> None:
    allowed = ("tenantflow.domain", "tenantflow.errors")
    assert _breaking(graph, "tenantflow.domain", allowed) == []


def test_adapters_import_only_ports_domain_errors_and_adapters(graph: set[Import]) -> None:
    allowed = ("tenantflow.adapters", "tenantflow.ports", "tenantflow.domain", "tenantflow.errors")
    assert _breaking(graph, "tenantflow.adapters", allowed) == []


def test_api_and_cli_reach_adapters_only_through_the_composition(graph: set[Import]) -> None:
    inside = [
        str(i)
        for i in graph
        if _in(i.source, "tenantflow.api", "tenantflow.cli")
        and _in(i.target, "tenantflow.adapters")
        and i.target != "tenantflow.adapters"
    ]
    assert sorted(inside) == []


def test_selftest_never_imports_the_cli(graph: set[Import]) -> None:
    assert (
        sorted(
            str(i)
            for i in graph
            if _in(i.source, "tenantflow.selftest") and _in(i.target, "tenantflow.cli")
        )
        == []
    )


def test_engine_reaches_adapters_only_where_it_composes(graph: set[Import]) -> None:
    edges = {
        (i.source, i.target)
        for i in graph
        if _in(i.source, "tenantflow.engine") and _in(i.target, "tenantflow.adapters")
    }
    assert sorted(edges - KNOWN_ENGINE_TO_ADAPTERS) == [], "a new engine -> adapters import"
    assert sorted(KNOWN_ENGINE_TO_ADAPTERS - edges) == [], (
        "gone: delete these from KNOWN_ENGINE_TO_ADAPTERS"
    )


def test_no_import_circle_beyond_the_known_edges(graph: set[Import]) -> None:
    on_circles = circle_edges({(i.source, i.target) for i in graph})
    new = sorted(on_circles - KNOWN_CIRCLE_EDGES)
    assert new == [], "new import circle edges (break the circle; do not list them)"
    gone = sorted(KNOWN_CIRCLE_EDGES - on_circles)
    assert gone == [], "no longer on a circle: delete these from KNOWN_CIRCLE_EDGES"


def test_the_circles_broken_once_stay_broken(graph: set[Import]) -> None:
    on_circles = circle_edges({(i.source, i.target) for i in graph})
    ends = {m for edge in on_circles for m in edge}
    for module in (
        "tenantflow.domain.spec",
        "tenantflow.domain.replan",
        "tenantflow.adapters.postgres",
        "tenantflow.adapters.postgres_cluster",
        "tenantflow.selftest.isolation",
        "tenantflow.cli.main",
        "tenantflow.cli.selftest",
    ):
        assert module not in ends
    assert all(_in(a, "tenantflow.engine") for a, _ in KNOWN_CIRCLE_EDGES)


# -- the walker itself: what it sees ---------------------------------------------------------

_KNOWN = {
    name: Path(name)
    for name in ("tenantflow", "tenantflow.p", "tenantflow.p.a", "tenantflow.p.b", "tenantflow.q")
}


def test_the_walker_sees_every_kind_of_import() -> None:
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
import tenantflow.q
from . import b
if TYPE_CHECKING:
    from tenantflow.p.b import Thing
def later():
    from ..q import name
    import json
"""
    found = imports_in(source, "tenantflow.p.a", False, _KNOWN)
    assert sorted((i.target, i.line) for i in found) == [
        ("tenantflow.p.b", 5),
        ("tenantflow.p.b", 7),
        ("tenantflow.q", 4),
        ("tenantflow.q", 9),
    ]
    package = imports_in("from .a import x\nfrom . import b", "tenantflow.p", True, _KNOWN)
    assert sorted(i.target for i in package) == ["tenantflow.p.a", "tenantflow.p.b"]


def test_circles_are_found_however_long() -> None:
    edges = {("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("x", "a")}
    assert circle_edges(edges) == {("a", "b"), ("b", "c"), ("c", "a"), ("d", "e"), ("e", "d")}
