"""Training's cache records are kept per run name (pipelines/dag.py train_record): training another
name in the same lake never replaces a run's record, so the first run stays a cache hit and its
folder is kept. Lakes of the old layout (one record per stage) are adopted by the run they describe.

The trainer itself is replaced by a recorder that writes into the run's folder as Ray Train would:
what is tested is the cache decision (train, resume, skip, delete), not training."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from catalog import layout
from catalog.lake import Lake, StageSpec, code_digest
from pipelines import dag, plan
from pipelines.common import Context
from pipelines.config import RunConfig
from stages.train_config import TrainSection


@pytest.fixture
def trained(monkeypatch):
    """Calls of the (replaced) trainer, as (name, stage); each writes <lake>/train/<name>-<stage>/ckpt-<n>."""
    import pipelines.train

    calls: list[tuple[str, str]] = []

    def fake_train(ctx, stage):
        name = ctx.cfg.train.name
        calls.append((name, stage))
        run_dir = Path(ctx.lake.base) / layout.TRAIN / f"{name}-{stage}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"ckpt-{len(calls)}").write_text(name)
        return {"stage": stage, "step": ctx.cfg.train.stage(stage).steps, "name": name}

    monkeypatch.setattr(pipelines.train, "run_train", fake_train)
    return calls


def _ctx(root: Path, name: str, seed: int) -> Context:
    train = TrainSection(name=name)
    train = dataclasses.replace(train, encoder=dataclasses.replace(train.encoder, seed=seed, steps=3))
    return Context(RunConfig(lake=str(root), train=train), Lake(str(root)), None)


def _files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


def test_another_run_name_keeps_the_first_runs_record_and_folder(tmp_path, trained):
    a, b = _ctx(tmp_path, "seed0", 0), _ctx(tmp_path, "seed1", 1)
    first = dag.run_train(a, "encoder")
    dag.run_train(b, "encoder")
    folder = tmp_path / layout.TRAIN / "seed0-encoder"
    assert _files(folder) == ["ckpt-1"]
    again = dag.run_train(a, "encoder")  # seed 0 again: a cache hit, its folder untouched
    assert trained == [("seed0", "encoder"), ("seed1", "encoder")]
    assert again == first and _files(folder) == ["ckpt-1"]
    assert (tmp_path / "_stages" / "train_encoder" / "seed0" / "_manifest.json").is_file()
    assert (tmp_path / "_stages" / "train_encoder" / "seed1" / "_manifest.json").is_file()
    # --plan reads the run's own record, and sees the config the stage digests as unchanged
    assert plan.cache_state(a.cfg, str(tmp_path), "train_encoder").endswith("cached unless its inputs changed")
    c = _ctx(tmp_path, "seed2", 2)
    assert plan.cache_state(c.cfg, str(tmp_path), "train_encoder") == "not run: runs"
    # a changed config of the same name retrains it afresh (its old checkpoints are not resumed)
    changed = _ctx(tmp_path, "seed0", 5)
    dag.run_train(changed, "encoder")
    assert trained[-1] == ("seed0", "encoder") and _files(folder) == ["ckpt-3"]
    assert _files(tmp_path / layout.TRAIN / "seed1-encoder") == ["ckpt-2"]


def _old_layout_spec(ctx: Context) -> StageSpec:
    """The spec the code before per-name records wrote, in _stages/train_encoder/ itself."""
    me = dag.BY_NAME["train_encoder"]
    return StageSpec(me.name, me.writes, {t: ctx.lake.digest(t) for t in me.reads},
                     dag.train_config_digest(ctx.cfg, "encoder"), code_digest("stages.train"))


def test_a_finished_run_of_the_old_layout_stays_a_cache_hit(tmp_path, trained):
    a, b = _ctx(tmp_path, "seed0", 0), _ctx(tmp_path, "seed1", 1)
    old = _old_layout_spec(a)
    a.lake.begin(old)
    a.lake.finish(old, {"steps": 3}, {"summary": {"stage": "encoder", "step": 3, "name": "old"}})
    folder = tmp_path / layout.TRAIN / "seed0-encoder"
    folder.mkdir(parents=True)
    (folder / "ckpt-old").write_text("")
    dag.run_train(b, "encoder")  # another name: runs, and leaves seed0's old record alone
    assert (tmp_path / "_stages" / "train_encoder" / "_manifest.json").is_file()
    summary = dag.run_train(a, "encoder")
    assert trained == [("seed1", "encoder")] and summary["name"] == "old"
    assert _files(folder) == ["ckpt-old"]
    stage_dir = tmp_path / "_stages" / "train_encoder"
    assert not (stage_dir / "_manifest.json").exists() and not (stage_dir / "_started.json").exists()
    assert (stage_dir / "seed0" / "_manifest.json").is_file()
    assert dag.run_train(a, "encoder")["name"] == "old"  # and stays one


def test_a_killed_run_of_the_old_layout_resumes_its_checkpoints(tmp_path, trained):
    a = _ctx(tmp_path, "seed0", 0)
    a.lake.begin(_old_layout_spec(a))  # started, never finished
    folder = tmp_path / layout.TRAIN / "seed0-encoder"
    folder.mkdir(parents=True)
    (folder / "ckpt-old").write_text("")
    dag.run_train(a, "encoder")
    assert trained == [("seed0", "encoder")]
    assert _files(folder) == ["ckpt-1", "ckpt-old"]  # resumed: the old checkpoints were kept
    assert not (tmp_path / "_stages" / "train_encoder" / "_started.json").exists()
