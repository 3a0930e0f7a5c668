"""catalog/layout.py holds the lake's folder names: no string literal in stages/ or pipelines/ names a
lake table, partition or folder where a path is built (read from the source with ast)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from catalog import layout
from tests.support import ROOT

NAMES = set(layout.TABLE_NAMES) | set(layout.FOLDER_NAMES)
# Lake methods whose arguments are table or folder names
LAKE_METHODS = {"read", "files", "exists", "digest", "manifest", "path", "uri", "write_part", "rewrite_parts",
                "status_counts", "done_keys"}
# functions whose arguments at these positions are table names (the others are stage names or data)
PATH_ARGS = {"StageSpec": {1}, "Stage": {3, 4}, "LakeWriter": {1}, "_index": {1}, "partition": {0},
             "stage_record": set()}
PATH_KEYWORDS = {"table", "input_table", "inputs", "reads", "writes"}


def _is_lake_path(value: object) -> bool:
    return isinstance(value, str) and (value in NAMES or ("/" in value and value.split("/")[0] in NAMES))


def _literals(node: ast.AST) -> list[ast.AST]:
    """String constants in ``node``: itself, the items of a tuple/list/set literal, an f-string's head."""
    if isinstance(node, ast.Constant):
        return [node] if _is_lake_path(node.value) else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [c for e in node.elts for c in _literals(e)]
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        head = str(node.values[0].value)
        return [node] if "/" in head and head.split("/")[0] in NAMES else []
    return []


def path_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each lake name written as a literal in a path position of ``source``."""
    found: list[ast.AST] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if isinstance(func, ast.Attribute) and name in LAKE_METHODS:
                positions = range(len(node.args))
            else:
                positions = PATH_ARGS.get(name, ())
            for i in positions:
                if i < len(node.args):
                    found += _literals(node.args[i])
            found += [c for k in node.keywords if k.arg in PATH_KEYWORDS for c in _literals(k.value)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += _literals(node.left) + _literals(node.right)
        elif isinstance(node, ast.JoinedStr):
            found += _literals(node)
    return sorted({(n.lineno, ast.get_source_segment(source, n) or "") for n in found})


@pytest.mark.parametrize("package", ["stages", "pipelines"])
def test_no_lake_name_is_a_literal_path(package):
    bad = {str(p.relative_to(ROOT)): hits for p in sorted((ROOT / package).glob("*.py"))
           if (hits := path_literals(p.read_text()))}
    assert bad == {}, f"use catalog.layout's names: {bad}"


def test_the_scan_finds_each_kind_of_literal_path():
    source = '''
lake.read("filtered", columns=["image_id"])
Path(lake.base) / "reports" / "evaluate"
run_stage(ctx, stage="restore", table=f"restorations/{run_id}", inputs=["pairs"], input_table="pairs/degraded")
StageSpec("evaluate", "metrics", {}, "", "")
Stage("baselines", run, "baselines", ("pairs",), "baselines")
lake.uri("train")
'''
    assert [text for _, text in path_literals(source)] == [
        '"filtered"', '"reports"', '"pairs"', '"pairs/degraded"', 'f"restorations/{run_id}"', '"metrics"',
        '"baselines"', '"pairs"', '"train"']  # by line, then text
    # names that are not paths stay allowed: stage names, config values, metric keys
    assert path_literals('StageSpec("sources", layout.SOURCES, {}, "", "")\n'
                         'if cfg.source == "images": log({"images": 3})\n') == []


def test_the_lake_knows_every_folder_name():
    from catalog.lake import OWN_ENTRIES
    from catalog.schemas import TABLES

    assert set(TABLES) == set(layout.TABLE_NAMES)
    assert set(layout.FOLDER_NAMES) <= OWN_ENTRIES  # a lake check never takes them for strays
    assert layout.DEGRADED.split("/")[0] == layout.NEGATIVES.split("/")[0] == layout.PAIRS
