"""The real path at SDXL size, on a CPU: a random file in the released SUPIR layout is converted by
``python -m model.convert_official``, then ``pipelines/restore.py`` restores a small photo with it
in 2 steps: the whole SDXL-size model (UNet 2567.5M, untrimmed adaptor 1243.4M, connectors 54.8M,
E_dr 34.2M, VAE, CLIP-L and OpenCLIP-bigG text encoders) with random weights in bfloat16.

Needs about 10-11 GB of RAM and a few minutes on 2 cores; prints one JSON line with the time of
each phase and the peak RSS of the process tree (the restoring Ray actor included).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from PIL import Image

from model.checkpoint import PARTS, read_meta
from tests.support import ROOT

TSV = ROOT / "tests" / "data" / "official_v0_keys.tsv"  # the released key layout

pytestmark = pytest.mark.slow


WRITE_RANDOM = """
import sys, torch
from safetensors.torch import save_file
rows = [line.split("\\t") for line in open(sys.argv[1]).read().splitlines()[1:]]
g = torch.Generator().manual_seed(0)
tensors = {k: (torch.randn([int(x) for x in s.split("x")], generator=g) * 0.02).to(torch.bfloat16) for k, s in rows}
n = sum(t.numel() for t in tensors.values())
tensors["model.control_model.mask_LQ"] = torch.ones(1, 1, 64, 64, dtype=torch.bfloat16)  # dropped by name
save_file(tensors, sys.argv[2])
print(n)
"""


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, seconds, peak RSS in GiB of the command's whole process tree, sampled every 0.25 s)."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def poll():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.25)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, _ = proc.communicate()
    done.set()
    t.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None), time.time() - t0, peak[0] / 2 ** 30


def test_sdxl_size_convert_and_restore_on_cpu(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    times = {}

    # 1. a random file with exactly the released names and shapes (bf16, 2.7 GB), written by a
    #    child process so that this one stays small
    supir = tmp_path / "SUPIR-v0Q-random.safetensors"
    r, times["write_file_s"], _ = run_measured([sys.executable, "-c", WRITE_RANDOM, str(TSV), str(supir)], env)
    assert r.returncode == 0 and int(r.stdout.split()[-1]) == 1_332_339_984, r.stdout[-3000:]

    # 2. convert (prior: the sdxl preset's seeded random one, recorded as null)
    ckpt = tmp_path / "supir-v0Q"
    r, times["convert_s"], convert_gib = run_measured(
        [sys.executable, "-m", "model.convert_official", "--supir", str(supir), "--out", str(ckpt)], env)
    assert r.returncode == 0, r.stdout[-3000:]
    supir.unlink()
    meta = read_meta(ckpt)
    assert meta["model"]["preset"] == "sdxl" and meta["extra"]["tensors"] == 1036
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in cls.from_config(cls.load_config(ckpt / name)).parameters())
                  for name, cls in PARTS.items()}
    assert round(counts["adaptor"] / 1e6, 1) == 1243.4 and round(counts["connectors"] / 1e6, 1) == 54.8
    assert round(counts["encoder"] / 1e6, 1) == 34.2

    # 3. restore a small photo through the folder pipeline, 2 steps, released sampler settings
    src = sorted((ROOT / "data" / "samples").glob("*.jpg"))[0]
    (tmp_path / "in").mkdir()
    Image.open(src).convert("RGB").resize((96, 64)).save(tmp_path / "in" / "photo.png")
    cmd = [sys.executable, "pipelines/restore.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
           f"restore.model={ckpt}", "restore.sampler.num_steps=2", "restore.min_size=128", "restore.device=cpu",
           "restore.dtype=bfloat16", "restore.sampler.preset=released", "tracking.enabled=false",
           "restore.progress=false", "ray.progress_bars=false", "ray.num_cpus=2"]
    r, times["restore_s"], restore_gib = run_measured(cmd, env)
    assert r.returncode == 0 and "restored 1/1 images" in r.stdout, r.stdout[-5000:]
    out = Image.open(tmp_path / "out" / "photo.png")
    assert out.size == (96, 64) and out.mode == "RGB"
    print(json.dumps({"test": "sdxl_size_cpu", **{k: round(v, 1) for k, v in times.items()},
                      "convert_peak_rss_gib": round(convert_gib, 2), "restore_peak_rss_gib": round(restore_gib, 2),
                      "parameters": counts}))
