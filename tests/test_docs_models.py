"""The documentation's model list is what the code and the tests cover: the support table of docs/models/index.md
against the registered adapters and methods, and the README's model families against the registered families."""

from __future__ import annotations

import re
from pathlib import Path

import diffcache
from diffcache.adapters import registered_adapters

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = [a.family for a in registered_adapters() if a.__module__.startswith("diffcache.")]
COLUMN = {"AdaCache": "adacache", "CFG-Cache": "cfg-cache", "DeepCache": "deepcache", "EasyCache": "easycache", "FasterCache": "fastercache", "FBCache": "fbcache",
          "HSA": "hsa", "PAB": "pab", "TeaCache": "teacache"}


def _support_table() -> dict[str, set[str]]:
    text = (ROOT / "docs/models/index.md").read_text()
    lines = text[text.index("<!-- support-table"):].splitlines()[1:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {COLUMN[h] for h, c in zip(header[2:], cells[2:]) if c}
    return rows


def test_the_support_table_is_what_list_methods_says():
    table = _support_table()
    assert sorted(table) == sorted(BUILT_IN), "one row per built-in family"
    for info in diffcache.list_methods():
        for family in BUILT_IN:
            assert (info.name in table[family]) == (family in info.families), (info.name, family)


def test_the_readme_names_exactly_the_built_in_families():
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"\*\*Model families\*\*[^:]*:(.*?)\.\n", readme, re.S).group(1)
    line = re.sub(r"\s*\([^)]*\)", "", line.replace("\n", " "))  # "Wan (2.1, 2.2 …)" -> "Wan"
    named = {name.strip() for name in line.split(",")}
    assert named == set(BUILT_IN)
