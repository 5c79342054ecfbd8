"""The house rules of the source tree, read from the code itself (static imports, no model needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diffcache"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, top_level_only: bool) -> set[str]:
    """The diffcache modules ``name`` imports (resolved relative imports; ``from pkg import mod`` counts mod)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("diffcache")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("diffcache"):
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.add(candidate if candidate in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycles_at_module_level():
    graph = {name: _imports(name, top_level_only=True) for name in MODULES}
    # a package's __init__ importing its own submodules is how packages work: not a cycle through the package
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("room,forbidden", [
    ("diffcache.embedded", ("diffcache.bench", "diffcache.distill")),
    ("diffcache.quality", ("diffcache.bench", "diffcache.distill", "diffcache.methods", "diffcache.embedded",
                           "diffcache.cli")),
    ("diffcache.loading", ("diffcache.bench", "diffcache.distill")),
    ("diffcache.methods", ("diffcache.bench", "diffcache.embedded", "diffcache.files", "diffcache.calibrate",
                           "diffcache.cli")),
    ("diffcache.adapters", ("diffcache.methods", "diffcache.bench", "diffcache.embedded")),
    ("diffcache.bench.report", ("diffcache.bench.sweep", "diffcache.bench.benchmark")),
])
def test_no_upward_imports(room, forbidden):
    for name in MODULES:
        if name == room or name.startswith(room + "."):
            bad = sorted(m for m in _imports(name, top_level_only=False) if m.startswith(forbidden))
            assert not bad, f"{name} imports {bad}"


def test_methods_neither_plot_nor_write_files():
    for name, path in MODULES.items():
        if name.startswith("diffcache.methods."):
            text = path.read_text()
            assert "matplotlib" not in text and "imageio" not in text and ".write_text(" not in text, name
