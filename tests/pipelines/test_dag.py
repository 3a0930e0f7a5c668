"""pipelines/dag.py: the stage table is the one list of stages; everything that names stages agrees with it."""
from __future__ import annotations

import dataclasses

import pytest

from catalog.lake import base_table
from catalog.schemas import TABLES
from pipelines import cli, dag, plan
from pipelines.config import RunConfig


def problems(table: tuple[dag.Stage, ...]) -> list[str]:
    """What a stage of ``table`` lacks elsewhere: a config section, a --help line, the DAG drawing,
    --plan's resources, lake tables that exist."""
    cfg = RunConfig()
    sections = {f.name for f in dataclasses.fields(RunConfig)}
    out = []
    for s in table:
        if s.section not in sections or s.section not in cli.SECTIONS:
            out.append(f"{s.name}: section {s.section!r} is not a RunConfig field with a cli.SECTIONS line")
        if s.name not in cli.DAG.replace("->", " ").split():
            out.append(f"{s.name}: not in the DAG drawing of cli.DAG")
        try:
            if not plan.resources(cfg, s.name):
                out.append(f"{s.name}: --plan says nothing about its resources")
        except KeyError:
            out.append(f"{s.name}: no resources in pipelines/plan.py")
        for t in s.reads + ((s.writes,) if s.writes else ()):
            if base_table(t) not in TABLES and not t.startswith("_stages/"):
                out.append(f"{s.name}: {t!r} is not a lake table")
    return out


def test_every_stage_is_wired_everywhere():
    assert problems(dag.STAGE_TABLE) == []
    names = [s.name for s in dag.STAGE_TABLE]
    assert len(set(names)) == len(names)
    assert cli.STAGES == tuple(names) and list(dag.BY_NAME) == names
    assert RunConfig().stages == names  # the default run runs them all, in DAG order


def test_a_stage_added_in_the_table_alone_is_reported():
    new = dag.Stage("sharpen", lambda ctx: {}, "sharpen", ("pairs",), "sharpened", ("stages.sharpen",))
    assert problems(dag.STAGE_TABLE + (new,)) == [
        "sharpen: section 'sharpen' is not a RunConfig field with a cli.SECTIONS line",
        "sharpen: not in the DAG drawing of cli.DAG",
        "sharpen: no resources in pipelines/plan.py",
        "sharpen: 'sharpened' is not a lake table",
    ]


def test_a_stage_name_outside_the_table_is_refused():
    from catalog.config import ConfigError

    with pytest.raises(ConfigError, match="stages = 'sharpen'"):
        RunConfig(stages=["crawl", "sharpen"])


def test_plan_reads_the_manifest_of_the_table_a_stage_writes(tmp_path):
    import json

    (tmp_path / "filtered").mkdir()
    (tmp_path / "filtered" / "_manifest.json").write_text(json.dumps({"rows": 3, "spec": {}}))
    assert plan.cache_state(RunConfig(), str(tmp_path), "caption") == "not run: runs"
    assert plan.cache_state(RunConfig(), str(tmp_path), "filter").startswith("done (3 rows")
