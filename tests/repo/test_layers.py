"""The layers hold: pipelines -> stages -> model / evaluation / degradations -> catalog.

Read from the source with ``ast`` (catalog.lake's import reader, the one code_digest follows), so a
lazy import inside a function or under TYPE_CHECKING counts as well. Code that several stages use
lives below stages/, so no stage imports another stage's module, except a stage's own helper
modules listed here with the reason each is a file of its own."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from catalog.lake import _imports
from tests.support import ROOT


# (importer, imported): why the imported module is the importer's own helper, not shared library code
STAGE_HELPERS = {
    ("stages.train", "stages.train_config"): "train's config section, loaded by pipelines/ without the loop",
    ("stages.train", "stages.train_data"): "train's data: examples, degradation on the fly, batches",
    ("stages.train", "stages.train_dist"): "train's DDP / FSDP wrapping and collectives",
    ("stages.prior_train", "stages.prior_train_config"): "stage 0's config section",
    ("stages.prior_train", "stages.prior_train_data"): "stage 0's crops and augmentations",
    ("stages.crawl", "stages.crawl_config"): "crawl's config section, shared by its fetcher and HTTP client",
    ("stages.crawl", "stages.crawl_http"): "crawl's guarded HTTP client",
    ("stages.crawl", "stages.crawl_sources"): "crawl's source readers (lists, folders, datasets)",
    ("stages.crawl_http", "stages.crawl_config"): "the crawl config it downloads by",
    ("stages.crawl_sources", "stages.crawl_config"): "the crawl config it reads sources by",
    ("stages.crawl_sources", "stages.crawl_http"): "FetchError, the crawl's one error type",
    ("stages.restore_pyfunc_model", "stages.restore_pyfunc"): "MLflow's models-from-code file for the pyfunc",
    ("stages.restore_pyfunc", "stages.restore"): "the MLflow pyfunc packages the restore stage's Restorer",
    ("stages.ablations", "stages.restore"): "ablation rows are restore rows with other sampler settings: the restore "
                                           "stage's own batch adapter and config, so both come from one code path "
                                           "(the algorithm itself is model/restoration.py)",
}

# layers below stages/ and what they must not import
BELOW_STAGES = {
    "catalog": ("model", "evaluation", "degradations", "stages", "pipelines"),
    "degradations": ("stages", "pipelines"),
    "model": ("stages", "pipelines"),
    "evaluation": ("stages", "pipelines"),
}


def _module(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def _project_imports(path: Path, root: Path) -> set[str]:
    """Project modules ``path`` imports, without bare package names (``stages`` of ``from stages import x``)."""
    return {m for m in _imports(path, root) if "." in m}


def stage_violations(root: Path = ROOT) -> list[str]:
    """'<file> imports <module>' for each stage module importing another stage's module not in STAGE_HELPERS."""
    bad = []
    for path in sorted((root / "stages").glob("*.py")):
        importer = _module(path, root)
        for imported in sorted(_project_imports(path, root)):
            if imported.startswith("stages.") and (importer, imported) not in STAGE_HELPERS:
                bad.append(f"{path.relative_to(root)} imports {imported}")
    return bad


def layer_violations(layer: str, root: Path = ROOT) -> list[str]:
    """'<file> imports <module>' for each module of ``layer`` importing a layer above it."""
    return [f"{path.relative_to(root)} imports {imported}"
            for path in sorted((root / layer).rglob("*.py"))
            for imported in sorted(_imports(path, root)) if imported.split(".")[0] in BELOW_STAGES[layer]]


def test_no_stage_imports_another_stage_for_library_code():
    bad = stage_violations()
    assert not bad, ("stage modules import other stages' modules; move the shared code below stages/ "
                     "(model/, catalog/, degradations/) or list a stage's own helper in STAGE_HELPERS:\n"
                     + "\n".join(bad))


def test_every_listed_helper_import_exists():
    """A stale entry would allow an import nobody makes (and hide a new one under an old reason)."""
    made = {(_module(p, ROOT), m) for p in (ROOT / "stages").glob("*.py") for m in _project_imports(p, ROOT)}
    assert not set(STAGE_HELPERS) - made, sorted(set(STAGE_HELPERS) - made)


@pytest.mark.parametrize("layer", sorted(BELOW_STAGES))
def test_layers_below_stages_import_nothing_above_them(layer):
    bad = layer_violations(layer)
    assert not bad, f"{layer}/ must not import {', '.join(BELOW_STAGES[layer])}:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", ["stages", *sorted(BELOW_STAGES)])
def test_no_ray_and_no_pipelines_below_pipelines(layer):
    """Ray and its resources are pipelines/' concern: stages are plain callables (STYLE.md 6, 7)."""
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in ("ray", "pipelines")]
    assert not bad, "\n".join(bad)


def test_the_checks_name_the_file_of_a_hidden_forbidden_import(tmp_path):
    """A TYPE_CHECKING import and a function-level one are found, and the message names the file."""
    for pkg in ("stages", "catalog"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    for name in ("degrade", "filter", "train", "train_config"):
        (tmp_path / "stages" / f"{name}.py").write_text("")
    (tmp_path / "stages" / "negatives.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stages.degrade import Degrader\n"
        "def f():\n    from stages import filter\n")
    (tmp_path / "stages" / "train.py").write_text("from stages.train_config import TrainConfig\n")  # listed helper
    (tmp_path / "catalog" / "codec.py").write_text("def f():\n    import stages.filter\n")
    assert stage_violations(tmp_path) == ["stages/negatives.py imports stages.degrade",
                                          "stages/negatives.py imports stages.filter"]
    assert layer_violations("catalog", tmp_path) == ["catalog/codec.py imports stages",
                                                     "catalog/codec.py imports stages.filter"]
