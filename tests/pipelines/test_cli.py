"""The command line as a user meets it: fast --help on every entry point, --print-config, --plan,
`make weights` that fails when it could not seed, a demo that asks only for metrics it can compute."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT

ENTRY_POINTS = ["full", "ingest", "data", "evaluate", "train", "prior", "restore"]
HEAVY = ("torch", "ray", "diffusers", "transformers", "mlflow", "pyiqa")
# run a script the way `python pipelines/x.py --help` does, then report which heavy modules it imported
PROBE = """
import json, runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("PROBE " + json.dumps({{"code": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def full(capsys, *argv: str) -> subprocess.CompletedProcess:
    """pipelines/full.py's main in this process (the config classes import torch: 15 s per subprocess)."""
    from pipelines.full import main

    code = main(list(argv))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_answers_without_importing_torch_or_ray(name):
    script = str(ROOT / "pipelines" / f"{name}.py")
    r = run("-c", PROBE.format(script=script, heavy=HEAVY))
    probe = json.loads(r.stdout.rsplit("PROBE ", 1)[1])
    assert probe == {"code": 0, "heavy": []}, r.stderr[-2000:]
    assert "usage:" in r.stdout


def test_help_lists_the_stages_and_config_sections():
    r = run("pipelines/full.py", "--help")
    assert r.returncode == 0
    for word in ("crawl", "train_adaptor", "evaluate", "--print-config", "--plan", "tracking", "prior_train"):
        assert word in r.stdout
    r = run("pipelines/ingest.py", "--help")
    assert "crawl -> filter" in r.stdout and "train_adaptor" not in r.stdout.split("config sections")[0]


def test_print_config_shows_every_key_and_marks_non_defaults(capsys):
    from catalog.config import to_dict
    from pipelines.config import RunConfig, load_config

    r = full(capsys, "--config", str(ROOT / "configs/demo.yaml"), "--print-config", "filter.min_side=640")
    assert r.returncode == 0, r.stderr[-2000:]
    printed = yaml.safe_load(r.stdout)
    cfg = load_config(ROOT / "configs/demo.yaml", ["filter.min_side=640"])
    assert printed == json.loads(json.dumps(to_dict(cfg)))  # every key, every value (tuples as lists)
    default = RunConfig().filter.min_side
    assert f"min_side: 640  # default: {default}" in r.stdout
    assert "  threads: 8  # default: 16" in r.stdout  # crawl.threads from the file
    assert "  max_redirects: 5\n" in r.stdout  # a key the file does not set: its default, unmarked


def test_print_config_names_a_bad_key(capsys):
    r = full(capsys, "--print-config", "filter.min_sid=3")
    assert r.returncode == 2 and "filter.min_sid" in r.stderr


@pytest.mark.parametrize("config", ["configs/demo.yaml", "configs/sdxl.yaml"])
def test_plan_prints_dag_resources_and_cache_state_and_writes_nothing(config, tmp_path, capsys):
    lake = tmp_path / "lake"
    r = full(capsys, "--config", str(ROOT / config), "--plan", f"lake={lake}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not lake.exists()  # nothing written, no MLflow store created
    assert "(does not exist yet: every stage runs)" in r.stdout
    stages = yaml.safe_load((ROOT / config).read_text())["stages"]
    for stage in stages:
        assert f"\n  {stage}\n    resources: " in r.stdout
    if "sdxl" in config:
        assert "8 Captioner actors x 1 CPU + 1 GPU (llava-hf/llava-1.5-13b-hf" in r.stdout
        assert "64 Ray Train workers x 8 CPU + 1 GPU (fsdp, batch 4/worker" in r.stdout
        assert "require_gpus: true" in r.stdout


def test_plan_reports_finished_changed_and_started_stages(tmp_path, capsys):
    from catalog.config import digest
    from catalog.lake import Lake, StageSpec, code_digest
    from pipelines.config import load_config

    cfg = load_config(ROOT / "configs/demo.yaml", [f"lake={tmp_path}"])
    lake = Lake(tmp_path)
    for spec, counts in [(StageSpec("crawl", "images", {}, digest(cfg.crawl), code_digest("stages.crawl")), {"ok": 8}),
                         (StageSpec("filter", "filtered", {}, "another-config", code_digest("stages.filter")), {"kept": 8}),
                         (StageSpec("caption", "captions"), None)]:  # begun, never finished
        lake.begin(spec)
        if counts:
            lake.finish(spec, counts)
    r = full(capsys, "--plan", f"lake={tmp_path}", "stages=[crawl, filter, caption, degrade]")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split("stages (4):\n")[1].splitlines()
    state = {lines[i].strip(): lines[i + 2].split("lake:", 1)[1] for i in range(0, len(lines), 3)}
    assert "done (8 rows" in state["crawl"] and "cached unless its inputs changed" in state["crawl"]
    assert "config changed since: reruns" in state["filter"]
    assert "will resume" in state["caption"]
    assert state["degrade"].strip() == "not run: runs"


def test_plan_finds_restore_runs_in_their_partitions(tmp_path, capsys):
    """restore writes one partition per run id (restorations/<run_id>/_manifest.json), not a root manifest."""
    from catalog import layout
    from catalog.lake import Lake, StageSpec

    lake = Lake(tmp_path)
    spec = StageSpec("restore", layout.partition(layout.RESTORATIONS, "run-abc"))
    lake.begin(spec)
    lake.finish(spec, {"ok": 16})
    r = full(capsys, "--plan", f"lake={tmp_path}", "stages=[restore]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 restoration run(s) done (run-abc)" in r.stdout, r.stdout


def test_demo_metrics_are_all_computable_from_make_weights(tmp_path):
    """The demo asks only for metrics that `make weights` (seed) can give: none may end up n/a."""
    import torch
    from tests.support.iqa_weights import seeded_weights

    from evaluation.metrics import load_metric
    from pipelines.config import load_config

    folder, report = seeded_weights(tmp_path / "weights")
    if any(v.startswith("missing") for v in report.values()):
        pytest.skip(f"no package index to seed from: {report}")
    for name in load_config(ROOT / "configs/demo.yaml").evaluate.metrics:
        m = load_metric(name, folder, torch.device("cpu"))
        assert m.status == "ok", (name, m.error)


def test_seed_exits_nonzero_when_a_file_is_missing(tmp_path):
    """`make weights` runs this then `touch weights/.seeded`: a failure must stop make (and be retried)."""
    import tarfile

    bad = tmp_path / "basicsr-0.0.tar.gz"  # a valid archive without basicsr's NIQE parameters
    with tarfile.open(bad, "w:gz"):
        pass
    r = run("-m", "evaluation.metrics", "seed", "--weights", str(tmp_path / "w"), "--basicsr-sdist", str(bad))
    assert r.returncode == 1
    assert "missing" in r.stderr and "niqe" in r.stderr.lower()


def test_sdxl_config_is_the_full_scale_run():
    from pipelines.config import STAGES, load_config

    cfg = load_config(ROOT / "configs/sdxl.yaml")
    assert cfg.require_gpus and cfg.model.preset == "sdxl" and cfg.model.prior
    assert set(cfg.stages) == set(STAGES) - {"prior"}  # stage 0 is for the tiny prior only
    assert cfg.caption.model == "llava-hf/llava-1.5-13b-hf" and cfg.caption.resources.gpus_per_worker == 1
    for stage in ("encoder", "adaptor"):
        t = cfg.train.stage(stage)
        assert t.resources.gpus_per_worker == 1 and t.resources.workers * t.batch_size == 256 and t.crop_size == 512 and t.lr == 1e-5


@pytest.mark.parametrize("override, key", [
    ("model.preset=tiny", "model.preset"), ("model.prior=train", "model.prior"),
    ("train.adaptor.resources.gpus_per_worker=0", "train.adaptor.resources.gpus_per_worker"), ("caption.device=cpu", "caption.device"),
    ("restore.resources.gpus_per_worker=0", "restore.resources.gpus_per_worker"), ("caption.model=tiny-random", "caption.model"),
])
def test_full_scale_refuses_a_tiny_or_cpu_fallback(override, key):
    from catalog.config import ConfigError
    from pipelines.config import load_config
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "configs/sdxl.yaml", [override])
    load_config(ROOT / "configs/sdxl.yaml", [override, "require_gpus=false"])  # an explicit choice is allowed


def test_readme_sdxl_train_command_refuses_without_gpus():
    """README's `python pipelines/train.py -c configs/sdxl.yaml`, as printed: on a machine
    without GPUs it stops before any work (no lake, no MLflow store, no Ray) instead of training tiny."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the command would start the real training")
    existed = Path("/mnt/lake").exists()
    r = subprocess.run(["bash", "-c", "python pipelines/train.py -c configs/sdxl.yaml"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "require_gpus: true (a full-scale run) refuses to start" in r.stderr
    assert "TRAIN_RESULT" not in r.stdout and Path("/mnt/lake").exists() == existed
