"""ray_cluster.yaml against Ray's own schema, and a stage pinned to a second node of a real cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support import ROOT
from tests.support.ray_procs import RAY, ray_head



def test_ray_cluster_yaml_passes_rays_schema():
    import jsonschema

    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # the file as written
    validate_config(prepare_config(config))  # and with the launcher's defaults filled in, as `ray up` does
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for t in types if t != config["head_node_type"]]
    assert gpu_types and all(types[t]["node_config"]["InstanceType"].startswith(("g5", "p4d")) for t in gpu_types)
    assert any("pip install" in c and "supir" in c for c in config["setup_commands"])
    assert "/home/ubuntu/supir" in config["file_mounts"]
    bad = dict(config, not_a_key=1)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_ray_cluster_yaml_runs_mlflow_on_the_head_and_fails_on_the_bucket_placeholder(tmp_path):
    import subprocess

    text = (ROOT / "ray_cluster.yaml").read_text()
    config = yaml.safe_load(text)
    head = " ; ".join(config["head_start_ray_commands"])
    assert "mlflow server --host 0.0.0.0 --port 5000" in head and "--artifacts-destination s3://" in head
    assert not any("|| true" in c for c in config["setup_commands"])  # a failed bucket sync fails the setup
    guard = next(c for c in config["setup_commands"] if c.startswith("case "))
    assert subprocess.run(["bash", "-c", guard], capture_output=True).returncode == 1  # as shipped: refused
    mine = guard.replace("s3://my-bucket", "s3://lab-data")  # what the header tells the user to do
    assert subprocess.run(["bash", "-c", mine], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------------------------
# two nodes: a head and a worker with a custom resource

@pytest.fixture(scope="module")
def two_nodes():
    """`ray start --head` plus a second `ray start` node with {"pinned": 1}; torn down by process id.

    `ray stop --force` would end every Ray process on the machine, other users' clusters too; this
    fixture ends only the processes of its own cluster. The cluster uses token authentication
    with a private token, so it neither depends on nor disturbs a ~/.ray/auth_token left by others.
    """
    import secrets

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               HF_HUB_OFFLINE="1")
    with ray_head(env, num_cpus=1, dashboard=False, prefix="rt") as head:
        try:
            subprocess.run(RAY + ["start", f"--address={head.address}", "--num-cpus=1",
                                  "--resources={\"pinned\": 1}", "--disable-usage-stats"],
                           check=True, env=env, capture_output=True, text=True, timeout=240)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"ray start failed: {e.stderr[-2000:]}")
        yield head.address, env


class PinnedEvaluator:
    """The Evaluator stage, recording which node ran it."""

    def __init__(self, cfg, marker_dir: str):
        import ray

        from stages.evaluate import Evaluator

        self.stage = Evaluator(cfg)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.marker_dir = marker_dir

    def __call__(self, batch):
        Path(self.marker_dir, self.node_id).touch()
        return self.stage(batch)


def drive(address: str, lake_root: str, markers: str) -> None:
    """The driver of the two-node test (run in its own process, with the cluster's token in its env)."""
    import io

    import ray
    from PIL import Image
    from ray.data import ActorPoolStrategy

    from evaluation.metrics import EvalConfig
    from pipelines.common import LakeWriter

    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "HF_HUB_OFFLINE": "1"}})
    nodes = [n for n in ray.nodes() if n["Alive"]]
    pinned = [n["NodeID"] for n in nodes if n["Resources"].get("pinned")]
    ray.data.DataContext.get_current().enable_progress_bars = False

    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), v, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    rows = [{"pair_id": f"p{i}", "method": "bicubic", "run_id": "r", "degradation": "d",
             "restored": png(100 + i), "hq": png(110)} for i in range(6)]
    ds = ray.data.from_items(rows, override_num_blocks=3)
    ds = ds.map_batches(PinnedEvaluator, fn_constructor_args=(EvalConfig(metrics=["psnry"]), markers),
                        batch_size=2, compute=ActorPoolStrategy(size=1), num_cpus=0, resources={"pinned": 1})
    ds = ds.map_batches(LakeWriter(lake_root, "metrics"), batch_format="pyarrow", batch_size=None, num_cpus=0.1)
    written = sum(int(b["n"].sum()) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    print(json.dumps({"nodes": len(nodes), "pinned": pinned, "written": written}))
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_stage_pinned_to_a_custom_resource_runs_on_that_node(two_nodes, tmp_path):
    from catalog.lake import Lake

    address, env = two_nodes
    lake = Lake(str(tmp_path / "lake"))
    markers = tmp_path / "nodes"
    markers.mkdir()
    code = f"from tests.pipelines import test_cluster; test_cluster.drive({address!r}, {lake.root!r}, {str(markers)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and len(result["pinned"]) == 1 and result["written"] == 6
    assert sorted(p.name for p in markers.iterdir()) == result["pinned"]  # every batch ran on the pinned node
    out = lake.read("metrics")
    assert out.num_rows == 6 and set(out["status"].to_pylist()) == {"ok"}
