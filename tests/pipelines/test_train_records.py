"""Training's cache records are kept per run name (pipelines/dag.py train_record): training another
name in the same lake never replaces a run's record, so the first run stays a cache hit and its
folder is kept. A record of the old layout (one per stage) is removed, and each name trains once.

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


def test_a_record_of_the_old_layout_is_removed_and_each_name_trains_once(tmp_path, trained, caplog):
    """An old lake: one record per stage in _stages/train_encoder/ itself (the spec the code before
    per-name records wrote). It is never a cache hit (its code digest predates the share plan): it is
    removed with a warning naming it, each name trains once into its own record, then hits the cache."""
    a, b = _ctx(tmp_path, "seed0", 0), _ctx(tmp_path, "seed1", 1)
    me = dag.BY_NAME["train_encoder"]
    old = StageSpec(me.name, me.writes, {t: a.lake.digest(t) for t in me.reads},
                    dag.train_config_digest(a.cfg, "encoder"), code_digest("stages.train"))
    a.lake.begin(old)
    a.lake.finish(old, {"steps": 3}, {"summary": {"stage": "encoder", "step": 3}})
    stage_dir = tmp_path / "_stages" / "train_encoder"
    assert {p.name for p in stage_dir.iterdir()} == {"_manifest.json", "_started.json"}
    with caplog.at_level("WARNING", logger="supir"):
        dag.run_train(a, "encoder")
    assert "old layout" in caplog.text and str(stage_dir / "_manifest.json") in caplog.text
    assert {p.name for p in stage_dir.iterdir()} == {"seed0"}
    dag.run_train(b, "encoder")
    dag.run_train(a, "encoder")
    assert trained == [("seed0", "encoder"), ("seed1", "encoder")]


def test_stage_2_retrains_when_the_encoder_it_starts_from_changes(tmp_path, trained):
    """Stage 2 starts from stage 1's finished E_dr (init_from: auto): that folder's files are in its
    cache key, so an E_dr retrained under the same name (another encoder config) retrains stage 2
    instead of leaving it cached on the old encoder."""
    a = _ctx(tmp_path, "seed0", 0)
    final = tmp_path / layout.TRAIN / "seed0-encoder" / "final"
    final.mkdir(parents=True)
    (final / "supir.json").write_text("{}")
    (final / "encoder.safetensors").write_text("E_dr v1")
    dag.run_train(a, "adaptor")
    dag.run_train(a, "adaptor")
    assert trained == [("seed0", "adaptor")]  # the second is a cache hit
    (final / "encoder.safetensors").write_text("E_dr v2, retrained")
    dag.run_train(a, "adaptor")
    assert trained == [("seed0", "adaptor")] * 2
