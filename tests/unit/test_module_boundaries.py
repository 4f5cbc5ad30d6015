"""rayfleet's modules import in one direction: no circle (counting imports inside functions), lower layers never
import higher ones, nothing imports the CLI, and `import rayfleet` loads neither Ray nor the local process manager."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "rayfleet"

# modules that hold values and rules only: they import nothing of rayfleet but each other
VALUES = {"rayfleet.errors", "rayfleet.states", "rayfleet.resources", "rayfleet.templates", "rayfleet.config"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The rayfleet modules a file imports anywhere (in functions too), leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rayfleet"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rayfleet"))
    return found


GRAPH = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}
MODULES = set(GRAPH)
EDGES = {m: {t for t in targets if t in MODULES and t != m} for m, targets in GRAPH.items()}


def cycle_from(start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in EDGES[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen and not nxt.startswith(start + "."):  # a package importing its own parts is no circle
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def parent_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@pytest.mark.parametrize("module", sorted(MODULES - {"rayfleet"}))
def test_no_import_circle(module):
    cycle = cycle_from(module)
    if cycle is not None:
        cycle = None if any(c in parent_packages(module) for c in cycle) else cycle
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(VALUES))
def test_value_modules_import_only_values(module):
    assert EDGES[module] <= VALUES, sorted(EDGES[module] - VALUES)


def test_placement_imports_only_values_and_snapshots():
    allowed = VALUES | {"rayfleet.capacity"} | {m for m in MODULES if m.startswith("rayfleet.placement")}
    for module in (m for m in MODULES if m.startswith("rayfleet.placement")):
        assert EDGES[module] <= allowed, (module, sorted(EDGES[module] - allowed))


def test_nothing_imports_the_cli():
    users = {
        m for m, targets in EDGES.items() if any(t == "rayfleet.cli" or t.startswith("rayfleet.cli.") for t in targets)
    }
    assert sorted(m for m in users if m != "rayfleet.__main__" and not m.startswith("rayfleet.cli")) == []


def test_import_rayfleet_loads_neither_ray_nor_the_local_process_manager():
    code = (
        "import sys, rayfleet; "
        "print(sorted(m for m in ('ray', 'kubernetes', 'rayfleet.provisioning.local') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
