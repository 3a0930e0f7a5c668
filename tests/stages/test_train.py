"""Training without Ray: config checks, deterministic data, exact resume, the stage-1 PSNR gain,
registration in the MLflow registry and loading by name and alias (stages/train.py, pipelines/train.py)."""
from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalog.config import ConfigError, from_dict
from model.config import ModelConfig
from stages.train import LocalSession, TrainConfig, TrainSection, train_loop
from stages.train_data import TrainExamples, decode, shard_rows
from tests.support.train_helpers import make_pairs, sample_photos

TINY = ModelConfig(preset="tiny")


@pytest.fixture(scope="module")
def rows():
    torch.set_num_threads(1)
    return make_pairs(sample_photos()[:4], gt_size=96).to_pylist()


def test_config_checks_name_key_and_value():
    with pytest.raises(ConfigError, match=r"train.encoder.lr = -1"):
        TrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="crop_size"):
        TrainConfig(crop_size=100)
    with pytest.raises(ConfigError, match="unknown key 'train.encoder.lrr'"):
        from_dict(TrainSection, {"encoder": {"lrr": 1}}, prefix="train")
    with pytest.raises(ConfigError, match="reserved"):
        TrainSection(alias="latest")
    with pytest.raises(ConfigError, match="fsdp"):
        TrainConfig(strategy="fsdp", ema_decay=0.99)
    section = from_dict(TrainSection, {"encoder": {"steps": 3}, "adaptor": {"lr": 1e-4}}, prefix="train")
    assert (section.encoder.stage, section.adaptor.stage) == ("encoder", "adaptor")
    assert TrainConfig(lr=1e-3, warmup_steps=4).lr_at(1) == pytest.approx(5e-4)
    # cosine: the peak after warmup, half way down at the middle of the rest, 0 at the last step
    cos = TrainConfig(lr=1e-3, warmup_steps=4, steps=104, lr_decay="cosine")
    assert cos.lr_at(3) == pytest.approx(1e-3) and cos.lr_at(4) == pytest.approx(1e-3)
    assert cos.lr_at(54) == pytest.approx(5e-4) and cos.lr_at(104) == pytest.approx(0.0, abs=1e-12)
    assert [cos.lr_at(s) >= cos.lr_at(s + 1) for s in range(4, 104)] == [True] * 100
    assert TrainConfig(lr=1e-3, steps=104).lr_at(100) == pytest.approx(1e-3)  # constant (the paper)
    with pytest.raises(ConfigError, match="train.encoder.lr_decay"):
        TrainConfig(lr_decay="linear")


def test_batches_are_a_function_of_the_step(rows):
    a = TrainExamples(rows, batch_size=3, crop_size=64, seed=1)
    b = TrainExamples(list(reversed(rows)), batch_size=3, crop_size=64, seed=1)
    b.rows = sorted(b.rows, key=lambda r: r["pair_id"])
    a.rows = sorted(a.rows, key=lambda r: r["pair_id"])
    x, y = a.batch(5), b.batch(5)
    assert torch.equal(x.hq, y.hq) and torch.equal(x.lq, y.lq) and x.pair_ids == y.pair_ids
    assert x.hq.shape == (3, 3, 64, 64) and -1 <= float(x.hq.min()) and float(x.hq.max()) <= 1
    assert not torch.equal(a.batch(6).hq, x.hq)
    # every row once per epoch
    seen = [i for s in range(4) for i in TrainExamples(rows, 1, 64).indices(s)]
    assert sorted(seen) == list(range(4))
    assert a.position(7) == {"samples_seen": 21, "epoch": 5, "index_in_epoch": 1}
    fixed = TrainExamples(rows, 2, 64, fixed_batch=True)
    assert torch.equal(fixed.batch(0).lq, fixed.batch(9).lq)


def test_color_shuffle_permutes_hq_and_lq_alike(rows):
    plain = TrainExamples(rows, 4, 64, seed=2).batch(3)
    shuffled = TrainExamples(rows, 4, 64, seed=2, color_shuffle=1.0).batch(3)
    assert shuffled.pair_ids == plain.pair_ids
    changed = 0
    for i in range(4):
        # one permutation of the channels, found from HQ, maps LQ exactly too
        perms = [p for p in itertools.permutations(range(3)) if torch.equal(shuffled.hq[i], plain.hq[i, list(p)])]
        assert perms, f"pair {i}: HQ is not a channel permutation of the unshuffled crop"
        assert any(torch.equal(shuffled.lq[i], plain.lq[i, list(p)]) for p in perms)
        changed += not torch.equal(shuffled.hq[i], plain.hq[i])
    assert changed >= 1
    assert torch.equal(TrainExamples(rows, 4, 64, seed=2, color_shuffle=0.0).batch(3).hq, plain.hq)
    with pytest.raises(ConfigError, match=r"train.encoder.color_shuffle = 2 .*probability"):
        TrainConfig(color_shuffle=2)


def test_shards_and_captions(rows):
    shards = [shard_rows(rows, r, 3) for r in range(3)]
    assert sorted(p["pair_id"] for s in shards for p in s) == sorted(r["pair_id"] for r in rows)
    assert shard_rows(rows[:1], 2, 3)[0]["pair_id"] == rows[0]["pair_id"]  # fewer rows than workers


def test_on_the_fly_degradation_uses_the_degrade_stage(rows):
    from degradations import DegradeConfig

    ex = TrainExamples(rows, 2, 64, degrade=DegradeConfig(scale=4))
    x = ex.batch(0)
    assert x.lq.shape == x.hq.shape == (2, 3, 64, 64)
    assert not torch.equal(x.lq, x.hq)
    assert torch.equal(ex.batch(0).lq, x.lq)  # drawn per (pair, rank, step): reproducible


def _run(rows, root, **kw):
    cfg = TrainConfig(**{"stage": "adaptor", "steps": 6, "batch_size": 2, "lr": 1e-3, "crop_size": 64,
                         "checkpoint_every": 3, "progress": False, "ema_decay": 0.9, **kw})
    session = LocalSession(rows, root)
    return train_loop(cfg, TINY, session), session


@pytest.mark.slow
def test_resume_continues_exactly(rows, tmp_path):
    """Stop after the step-3 checkpoint, resume: steps 4..6 are the same as uninterrupted, and so are
    the weights, the optimizer state and the EMA."""
    full, _ = _run(rows, tmp_path / "full")
    first, _ = _run(rows, tmp_path / "cut", steps=3)
    assert first["losses"] == {k: v for k, v in full["losses"].items() if k <= 3}
    resumed, _ = _run(rows, tmp_path / "cut")
    assert resumed["start_step"] == 3 and sorted(resumed["losses"]) == [4, 5, 6]
    for k, v in resumed["losses"].items():
        assert v == pytest.approx(full["losses"][k], rel=1e-6)
    a, b = tmp_path / "full" / "checkpoint_00000006", tmp_path / "cut" / "checkpoint_00000006"
    sa, sb = (json.loads((d / "state.json").read_text()) for d in (a, b))
    assert sa["step"] == sb["step"] == 6 and sa["data"] == sb["data"]
    oa, ob = (torch.load(d / "optimizer.pt", weights_only=True) for d in (a, b))
    for k in oa["state"]:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa["state"][k][name], ob["state"][k][name], rtol=1e-5, atol=1e-9)
    from safetensors.torch import load_file

    for f in ("ema.safetensors", "model/adaptor/diffusion_pytorch_model.safetensors"):
        ea, eb = load_file(str(a / f)), load_file(str(b / f))
        for k in ea:
            torch.testing.assert_close(ea[k], eb[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_registered_model_loads_by_name_and_alias(rows, tmp_path, monkeypatch):
    """publish(): the final model as MLflow artifacts, registered with aliases; catalog/registry.py and
    pipelines/restore.py resolve models:/supir@<alias> (and @latest: the newest version)."""
    from ray.train import Checkpoint

    from catalog.lake import Lake
    from catalog.registry import resolve_model_path
    from catalog.tracking import Tracker, TrackingConfig
    from pipelines.restore import use_registered_model
    from pipelines.train import publish
    from stages.restore import RestoreConfig, Restorer
    from model.sampler import SamplerConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrainConfig(stage="encoder", steps=2, batch_size=1, crop_size=64, checkpoint_every=2, progress=False)
    train_loop(cfg, TINY, LocalSession(rows, tmp_path / "run"))
    lake = Lake(str(tmp_path / "lake"))
    tracker = Tracker(TrackingConfig(), lake.root)
    section = TrainSection(name="t")
    versions = []
    with tracker.pipeline("train", {}):
        for _ in range(2):
            with tracker.stage("train_encoder") as run:
                out = publish(Checkpoint.from_directory(str(tmp_path / "run" / "checkpoint_00000002")), lake, section,
                              "encoder", cfg, TINY, run)
                versions.append(out["model_version"])
    assert versions == ["1", "2"] and out["model_uri"] == "models:/supir@champion"
    assert (Path(out["final"]) / "supir.json").is_file()
    for uri in ("models:/supir@champion", "models:/supir@encoder", "models:/supir@latest", "models:/supir/1"):
        folder = resolve_model_path(uri, tracker.uri)
        assert (folder / "supir.json").is_file() and (folder / "train_config.yaml").is_file(), uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test: use_registered_model sets it
    assert use_registered_model("models:/supir@champion", "", str(tmp_path / "lake")) is not None
    assert __import__("os").environ["MLFLOW_TRACKING_URI"] == tracker.uri
    restorer = Restorer(RestoreConfig(model="models:/supir@champion", min_size=64, progress=False,
                                      sampler=SamplerConfig(num_steps=2)))
    png = io.BytesIO()
    Image.fromarray(decode(rows[0]["lq"])).save(png, format="PNG")
    out = restorer({"pair_id": np.array(["p"], dtype=object), "lq": np.array([png.getvalue()], dtype=object)})
    assert list(out["status"]) == ["ok"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="nosuchalias"):
        resolve_model_path("models:/supir@nosuchalias", tracker.uri)
