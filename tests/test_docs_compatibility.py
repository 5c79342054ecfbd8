"""docs/compatibility.md: every method has a row, every setting a column, and every cell names a test that exists.

The page is the user's answer to "does method X work with Y"; a cell that names a test which was renamed or deleted
would be a claim nothing checks any more."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from diffcache import list_methods

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "compatibility.md"
SETTINGS = ["bf16", "fp16", "compile", "model offload", "sequential offload", "group offload", "LoRA", "int8",
            "context parallel"]
CELL_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)")


def _matrix() -> tuple[list[str], dict[str, list[str]]]:
    text = PAGE.read_text()
    table = text[text.index("| method |"):].split("\n\n")[0]  # the first table: the matrix
    lines = [line for line in table.splitlines() if not set(line) <= set("|-: ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(header):
            rows[cells[0].strip("`* ")] = cells[1:]
    return header[1:], rows


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")}


def test_every_method_has_a_row_and_every_setting_a_column():
    header, rows = _matrix()
    assert header == SETTINGS
    assert set(rows) == {info.name for info in list_methods()}


def test_every_cell_names_a_test_that_exists():
    _, rows = _matrix()
    missing = []
    for method, cells in rows.items():
        for setting, cell in zip(SETTINGS, cells):
            named = CELL_TEST.findall(cell)
            if not named:
                missing.append(f"{method} × {setting}: no test named in {cell!r}")
            for file, name in named:
                path = ROOT / file
                if not path.exists() or name not in _defined_tests(path):
                    missing.append(f"{method} × {setting}: {file}::{name} does not exist")
    assert not missing, "\n".join(missing)
