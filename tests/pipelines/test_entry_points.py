"""One run config that every entry point loads: no entry point keeps a partial config class of its
own or a hand-written flag -> key map; options are `section.key=value` overrides (pipelines/cli.py)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT
ENTRY_POINTS = ("full", "train", "prior", "restore", "ingest", "data", "evaluate")
# the flags an entry point may add to cli.parser's (--config, --print-config, --plan): data that is
# not a config key (restore's folders)
OWN_FLAGS = {"restore": {"--input", "--output"}}


def own_config_and_flags(path: Path) -> list[str]:
    """Config dataclasses and argparse flags defined in ``path`` (name:line)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            out.append(f"class {node.name}:{node.lineno}")
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("add_argument", "ArgumentParser"):
            flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if not set(flags) <= OWN_FLAGS.get(path.stem, set()) or node.func.attr == "ArgumentParser":
                out.append(f"{node.func.attr} {' '.join(map(str, flags))}:{node.lineno}")
    return out


def test_entry_points_load_the_one_run_config():
    found = {name: own_config_and_flags(ROOT / "pipelines" / f"{name}.py") for name in ENTRY_POINTS}
    assert found == {name: [] for name in ENTRY_POINTS}
    for name in ENTRY_POINTS:  # each takes cli.parser, directly or through full.main
        text = (ROOT / "pipelines" / f"{name}.py").read_text()
        assert "cli.parser(" in text or "from pipelines.full import main" in text, name


def test_the_check_finds_a_partial_config_and_a_flag(tmp_path):
    path = tmp_path / "restore.py"
    path.write_text("import argparse\nfrom dataclasses import dataclass\n\n@dataclass\nclass TrainRunConfig:\n"
                    "    lake: str = ''\n\nap = argparse.ArgumentParser()\nap.add_argument('--input')\n"
                    "ap.add_argument('--steps', type=int)\n")
    assert own_config_and_flags(path) == ["class TrainRunConfig:5", "ArgumentParser :8", "add_argument --steps:10"]
