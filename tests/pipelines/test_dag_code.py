"""Each stage's code root is written once, in pipelines/dag.py STAGE_TABLE: the pipelines put its
digest into their cache keys and ``--plan`` compares a manifest against the same digest."""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from catalog.lake import code_digest
from pipelines import plan
from pipelines.config import RunConfig
from pipelines.dag import BY_NAME, STAGE_TABLE

from tests.support import ROOT


@pytest.mark.parametrize("stage", STAGE_TABLE, ids=lambda s: s.name)
def test_every_code_root_imports_and_is_digested(stage):
    assert stage.code and isinstance(stage.code, tuple)
    for name in stage.code:
        assert Path(importlib.import_module(name).__file__).resolve().is_relative_to(ROOT)
    assert stage.code_digest() == code_digest(*stage.code)


def hand_written_code_roots(folder: Path) -> list[str]:
    """Calls of code_digest("<module>") with a module name written out, as file:line."""
    out = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "code_digest"
                    and any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)):
                out.append(f"{path.name}:{node.lineno}")
    return out


def test_no_pipeline_names_a_code_root_by_hand(tmp_path):
    assert hand_written_code_roots(ROOT / "pipelines") == []
    # the check finds one
    (tmp_path / "p.py").write_text('from catalog.lake import code_digest\nx = code_digest("stages.crawl")\n')
    assert hand_written_code_roots(tmp_path) == ["p.py:2"]


@pytest.mark.parametrize("stage", [s.name for s in STAGE_TABLE if s.writes and s.name != "restore"])
def test_plan_compares_a_manifest_with_the_table_code_digest(tmp_path, stage):
    from catalog.config import digest

    cfg = RunConfig()
    from catalog.lake import Lake

    Lake(tmp_path)  # a lake (marked), as a run leaves it: --plan digests the config as the stage does
    want = plan._config_digest(cfg, str(tmp_path), stage)
    assert (want is None) == (stage in ("caption", "negatives"))  # those digest a section resolved at run time
    code = BY_NAME[stage].code_digest() + (":pyiqa-x:weights" if stage == "evaluate" else "")
    table = BY_NAME[stage].writes
    if stage.startswith("train_"):  # one record per run name
        from pipelines.dag import train_record

        table = train_record(stage.removeprefix("train_"), cfg.train.name)
    folder = tmp_path / table
    folder.mkdir(parents=True)

    def state(code: str) -> str:
        spec = {"config": want or digest({}), "code": code}
        (folder / "_manifest.json").write_text(json.dumps({"rows": 1, "spec": spec}))
        return plan.cache_state(cfg, str(tmp_path), stage)

    assert state(code).endswith("cached unless its inputs changed")
    assert state("0" * 16).endswith("code changed since: reruns")
