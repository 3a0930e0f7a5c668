"""Stage cache keys follow the code a stage really imports (catalog.lake.code_digest).

A stage's manifest records a digest of its code; the digest covers the stage's module and every
project module it imports, transitively, read from the source. These tests edit files in a temp
copy of the checkout and check which stages would rerun."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catalog.lake import Lake, StageSpec, code_digest, module_closure
from tests.support import ROOT
from pipelines.dag import STAGE_TABLE

PACKAGES = ("catalog", "stages", "model", "evaluation", "pipelines", "degradations")
# the code root each stage digests, from the stage table the pipelines and --plan read it from
STAGE_ROOTS = {s.name: s.code for s in STAGE_TABLE}


@pytest.fixture()
def checkout(tmp_path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _digests(root: Path) -> dict[str, str]:
    return {stage: code_digest(*mods, root=root) for stage, mods in STAGE_ROOTS.items()}


def _closure(mod: str, root: Path = ROOT) -> set[str]:
    return {p.relative_to(root).as_posix() for p in module_closure(mod, root=root)}


def test_editing_a_model_file_reruns_the_stages_that_use_it_and_no_other(checkout, tmp_path):
    lake = Lake(tmp_path / "lake")
    before = _digests(checkout)
    for stage, code in before.items():  # every stage finished once: a rerun with this code is cached
        spec = StageSpec(stage, f"_stages/{stage}", code=code)
        assert lake.begin(spec) == "fresh"
        lake.finish(spec, {"ok": 1})
    with open(checkout / "model" / "connectors.py", "a") as f:
        f.write("\n# an edit\n")
    after = _digests(checkout)
    states = {stage: lake.begin(StageSpec(stage, f"_stages/{stage}", code=code)) for stage, code in after.items()}
    # the files the old hand-written lists forgot: restore and train run the model's connectors
    for stage in ("restore", "train_encoder", "train_adaptor", "ablations"):
        assert states[stage] == "fresh", stage
    for stage in ("crawl", "filter", "caption", "degrade", "baselines"):
        assert states[stage] == "cached", stage


def test_editing_the_degradation_library_reruns_degrade_and_not_the_crawl(checkout):
    before = _digests(checkout)
    with open(checkout / "degradations" / "jpeg.py", "a") as f:
        f.write("\n# an edit\n")
    after = _digests(checkout)
    changed = {stage for stage in before if before[stage] != after[stage]}
    assert "degrade" in changed, changed
    assert not changed & {"crawl", "filter", "caption", "restore"}, changed


def test_closure_holds_what_the_hand_lists_forgot():
    restore = _closure("stages.restore")
    assert {"model/supir.py", "model/adaptor.py", "model/connectors.py", "model/checkpoint.py",
            "model/sampler.py", "model/tiling.py", "model/colorfix.py"} <= restore
    train = _closure("stages.train")
    assert {"model/supir.py", "model/adaptor.py", "stages/train_config.py", "stages/train_data.py"} <= train
    assert "model/supir.py" not in _closure("stages.crawl")


def test_function_level_and_relative_imports_count(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from .sub import leaf\n    return leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from ..other import X\n")
    (pkg / "other.py").write_text("X = 1\nimport os\n")
    (pkg / "unused.py").write_text("X = 2\n")
    files = {p.relative_to(tmp_path).as_posix() for p in module_closure("pkg.top", root=tmp_path)}
    assert files == {"pkg/__init__.py", "pkg/top.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py", "pkg/other.py"}
    d0 = code_digest("pkg.top", root=tmp_path)
    (pkg / "unused.py").write_text("X = 3\n")
    assert code_digest("pkg.top", root=tmp_path) == d0
    (pkg / "other.py").write_text("X = 2\n")
    assert code_digest("pkg.top", root=tmp_path) != d0


def test_unknown_module_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no_such_stage"):
        code_digest("stages.no_such_stage")
