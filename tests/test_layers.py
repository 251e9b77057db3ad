"""The package's import graph: no cycle, and every import points down the layers.

The graph is read from the source (``ast``), every ``import`` and
``from ... import`` of ``src/lillith``, at module level or inside a function
(a deferred import is still a dependency). An edge goes to the module
imported: ``from lillith.fabric import som`` to ``lillith.fabric.som``, ``from
lillith.fabric import SelfOrganizingMap`` to ``lillith.fabric`` (its
``__init__``). docs/architecture.md draws the layers.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lillith"

LAYERS: dict[str, int] = {
    "lillith.errors": 0,
    "lillith.records": 1,
    "lillith.fabric": 2,
    "lillith.sensors": 2,
    "lillith.state": 2,
    "lillith.agents": 3,
    "lillith.eval": 4,
    "lillith.runtime": 5,
    "lillith.bench": 6,  # the benchmarks measure everything below
}
"""Each top-level part of the package and its floor: a module imports only from
its own part and from parts on lower floors (``lillith/__init__.py``, the
public face, stands above them all)."""

NO_IO = {"asyncio", "socket", "ssl", "subprocess", "threading", "zarr", "fsspec", "pathlib",
         "structlog", "logging", "csv", "json", "tomllib", "shutil", "os"}
"""Modules ``lillith.fabric`` never imports: arrays in, arrays out, no I/O."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the package that module ``name`` (at ``path``) imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "lillith")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "lillith":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


@functools.cache
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := visit(m)) is not None:
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)) is not None:
            return c
    return None


def layer(name: str) -> int | None:
    for prefix, floor in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return floor
    return None


def part(name: str) -> str:
    return next(p for p in LAYERS if name == p or name.startswith(p + "."))


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_the_imports() -> None:
    g = graph()
    assert "lillith.errors" in g["lillith.fabric.som"]
    assert "lillith.agents.agent" in g["lillith.runtime.worker"]
    assert len(g) > 50


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in graph() if m != "lillith" and layer(m) is None]
    assert not unplaced


@pytest.mark.parametrize("name", sorted(m for m in graph() if m != "lillith"))
def test_imports_point_down_the_layers(name: str) -> None:
    floor = layer(name)
    assert floor is not None
    up = [m for m in graph()[name]
          if m == "lillith" or (part(m) != part(name) and (layer(m) or 0) >= floor)]
    assert not up, f"{name} (floor {floor}) imports {up}"


def test_the_fabric_does_no_io() -> None:
    found: dict[str, set[str]] = {}
    for name, path in modules().items():
        if not name.startswith("lillith.fabric"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = {n.split(".")[0] for n in names} & NO_IO
            if bad:
                found.setdefault(name, set()).update(bad)
    assert not found
