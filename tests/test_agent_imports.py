"""The container side's modules depend on each other one way: no import
cycle, not even through imports made only for type checking."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "pycontainer" / "agent"


def _module(path: Path) -> str:
    parts = path.relative_to(AGENT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Agent modules ``path`` imports (relative imports only: the agent uses no other)."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package.split(".") if package else []
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        if node.level - 1 > len(package.split(".") if package else []):
            continue  # above the agent package (pycontainer.units and such)
        target = ".".join([*base, *([node.module] if node.module else [])])
        for alias in node.names:
            name = f"{target}.{alias.name}" if target else alias.name
            found.add(name if name in known else target)
    return {m for m in found if m in known}


def test_no_import_cycle_in_the_container_side() -> None:
    paths = {_module(p): p for p in AGENT.rglob("*.py")}
    known = set(paths)
    # A package imports its modules (its facade); only modules are ordered here.
    graph = {
        name: {d for d in _imports(path, known) if d != name and not d.startswith(f"{name}.")}
        for name, path in paths.items()
        if name
    }
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle in pycontainer.agent: {' -> '.join(exc.args[1])}")
