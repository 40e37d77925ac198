"""The package layout is the architecture: every import points down the layers, and no module imports itself
back through a circle. Checked by reading the source, so a new climbing import fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cmt"
# Lowest first. A module may import from its own layer or any layer below it, never above.
LAYERS = ["runtime", "data", "models", "generation", "judges", "methods", "toy", "organisms", "config",
          "analysis", "phases", "cli", "__main__"]  # fmt: skip
MAX_LINES = 450
LONGER_ALLOWED = {"runtime/sandbox.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    top = module.split(".")[1] if module.count(".") else ""
    if top not in LAYERS:
        raise AssertionError(f"{module}: its package {top!r} has no layer; add it to LAYERS")
    return top


def cmt_imports(path: Path) -> set[str]:
    """Every cmt module `path` imports, at any depth (function-level imports count too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cmt."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cmt":
                found.update(f"cmt.{a.name}" for a in node.names)
            elif node.module.startswith("cmt."):
                found.add(node.module)
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py") if module_name(p) != "cmt"}


def graph() -> dict[str, set[str]]:
    known = set(MODULES)
    out = {}
    for name, path in MODULES.items():
        edges = set()
        for target in cmt_imports(path):
            # `from cmt.runtime import io` names the module cmt.runtime.io
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                edges.add(target)
        out[name] = edges
    return out


def test_every_import_points_down_the_layers():
    climbs = []
    for name, targets in graph().items():
        own = LAYERS.index(layer_of(name))
        for target in sorted(targets):
            if LAYERS.index(layer_of(target)) > own:
                climbs.append(f"{name} -> {target}")
    assert not climbs, "imports that climb a layer:\n" + "\n".join(climbs)


def test_no_import_circle():
    edges = graph()
    # Package __init__ modules run when a submodule is imported: an edge from each submodule to its package.
    for name in edges:
        parent = name.rsplit(".", 1)[0]
        if parent in edges and parent != "cmt":
            edges[name] = edges[name] | {parent}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1 and nxt != node.rsplit(".", 1)[0]:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_the_checker_sees_a_climb_and_a_circle():
    """Negative control: the layer rule and the cycle search flag a planted case."""
    assert LAYERS.index(layer_of("cmt.phases.label")) > LAYERS.index(layer_of("cmt.runtime.io"))
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("cmt.nowhere.x")


def test_modules_stay_small():
    long = [f"{p.relative_to(SRC)}: {n} lines" for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(SRC)) not in LONGER_ALLOWED]  # fmt: skip
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)
