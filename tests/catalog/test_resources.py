"""One Ray resource vocabulary: every stage section's `resources:` (catalog/resources.py), read by
pipelines/ only; the old per-stage names are refused with their new name."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from catalog.config import ConfigError
from catalog.resources import Resources
from pipelines.config import RunConfig, load_config

from tests.support import ROOT
OLD = {"workers", "actors", "num_workers", "num_gpus", "num_gpus_per_actor", "use_gpu", "cpus_per_worker", "micro_batch"}


def walk(obj, path=""):
    """(dotted path, field name, value) of every field of a config tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield path, f.name, value
        if dataclasses.is_dataclass(value) and not isinstance(value, Resources):
            yield from walk(value, f"{path}{f.name}.")


def test_no_section_keeps_an_old_resource_name():
    cfg = load_config(ROOT / "configs/sdxl.yaml", ["require_gpus=false"])
    assert [f"{p}{name}" for p, name, _ in walk(cfg) if name in OLD] == []
    with_resources = sorted(p.rstrip(".") for p, name, v in walk(cfg) if name == "resources")
    assert with_resources == ["baselines", "caption", "crawl", "degrade", "evaluate", "filter", "negatives",
                              "negatives.degrade", "prior_train", "restore", "train.adaptor", "train.encoder"]


@pytest.mark.parametrize("old, new", [
    ("crawl.workers=4", "crawl.resources.workers"), ("crawl.cpus_per_worker=2", "crawl.resources.cpus_per_worker"),
    ("filter.workers=4", "filter.resources.workers"), ("filter.num_gpus=1", "filter.resources.gpus_per_worker"),
    ("caption.actors=2", "caption.resources.workers"),
    ("caption.num_gpus_per_actor=1", "caption.resources.gpus_per_worker"),
    ("degrade.workers=4", "degrade.resources.workers"), ("prior_train.num_gpus=1", "prior_train.resources.gpus_per_worker"),
    ("negatives.actors=2", "negatives.resources.workers"), ("negatives.micro_batch=2", "negatives.batch_size"),
    ("train.encoder.num_workers=2", "train.encoder.resources.workers"),
    ("train.adaptor.use_gpu=true", "train.adaptor.resources.gpus_per_worker"),
    ("train.adaptor.cpus_per_worker=4", "train.adaptor.resources.cpus_per_worker"),
    ("restore.actors=2", "restore.resources.workers"),
    ("baselines.num_gpus_per_actor=1", "baselines.resources.gpus_per_worker"),
    ("evaluate.actors=2", "evaluate.resources.workers"),
    # one name for a number of sampling steps (num_steps), gt_size not copied under another name
    ("prior_train.sample_steps=4", "prior_train.sample_num_steps"),
    ("train.adaptor.sample_steps=4", "train.adaptor.sample_num_steps"),
    ("negatives.crop_size=256", "negatives.degrade.gt_size"),
])
def test_an_old_key_names_its_new_one(old, new):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/demo.yaml", [old])
    key = old.split("=")[0]
    assert f"'{key}' was renamed: set '{new}' instead" in str(e.value)


def test_a_partial_resources_mapping_keeps_the_section_default():
    cfg = load_config(None, ["restore.resources.workers=8", "crawl.resources.cpus_per_worker=2"])
    assert cfg.restore.resources == Resources(workers=8, gpus_per_worker=1.0)  # restore's default GPU stays
    assert cfg.crawl.resources == Resources(workers=2, cpus_per_worker=2.0)
    assert RunConfig().filter.resources == Resources(workers=2)


def test_train_workers_use_one_gpu_or_none():
    with pytest.raises(ConfigError, match=r"train\.encoder\.resources\.gpus_per_worker = 0\.5"):
        load_config(None, ["train.encoder.resources.gpus_per_worker=0.5"])
    with pytest.raises(ConfigError, match=r"prior_train\.resources\.workers = 2"):
        load_config(None, ["prior_train.resources.workers=2"])


def resource_reads(folder: Path) -> list[str]:
    """``<x>.resources`` read anywhere but in a section's own checks (``self.resources``)."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "resources"
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                out.append(f"{path.relative_to(folder.parent)}:{node.lineno}")
    return out


def test_only_pipelines_read_resources(tmp_path):
    for layer in ("stages", "evaluation", "model", "degradations"):
        assert resource_reads(ROOT / layer) == [], layer
    assert resource_reads(ROOT / "pipelines")  # where they are read
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "x.py").write_text("def f(cfg):\n    return cfg.resources.workers\n")
    assert resource_reads(tmp_path / "stages") == ["stages/x.py:2"]


def test_a_checkpoint_from_before_resources_still_resumes():
    """A checkpoint records its TrainConfig; one written with the old keys (num_workers at the top)
    has the same resume key as this run when its workers match, and another when they differ."""
    from catalog.config import to_dict
    from stages.train_config import TrainConfig

    cfg = TrainConfig(resources=Resources(workers=2))
    old = {k: v for k, v in to_dict(cfg).items() if k != "resources"} | {
        "num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0, "sample_steps": 20}
    assert cfg.resume_key(old) == cfg.resume_key()
    assert cfg.resume_key(old | {"num_workers": 1}) != cfg.resume_key()
    assert cfg.resume_key(to_dict(TrainConfig(resources=Resources(workers=1)))) != cfg.resume_key()
