"""Negative-quality samples: SDEdit of the prior toward the negative prompt, as `pairs` rows."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalog.config import ConfigError
from catalog.lake import conform
from degradations import DegradeConfig
from catalog.schemas import pair_id_of
from model.images import psnr
from model.prior import PriorModel, load_prior
from stages.degrade import regenerate
from stages.negatives import KIND, NegativeMaker, NegativesConfig, sdedit, sdedit_start
from model.sampler import NEGATIVE_QUALITY_PROMPT
from stages.split import SplitConfig
from tests.support import ROOT
from tests.support.prior_fixtures import torch_threads, trained_prior

CROP = 64


def _objects(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _png_crop(path, size=CROP, top=300, left=300) -> bytes:
    img = Image.open(path).convert("RGB").crop((left, top, left + size, top + size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def prior(photos):
    torch_threads(1)
    folder, _, _ = trained_prior()
    return folder, load_prior(str(folder), "tiny")


@pytest.fixture(scope="module")
def batch(photos):
    """Three `pairs`-like HQ rows and one corrupt one."""
    ids = ["img-a", "img-b", "img-bad", "img-c"]
    hq = [_png_crop(photos[0]), _png_crop(photos[1]), b"\x89PNG but not really", _png_crop(photos[2])]
    return {"pair_id": _objects([f"src-{i}" for i in ids]), "image_id": _objects(ids), "hq": _objects(hq)}


def _cfg(folder, **kw):
    return NegativesConfig(prior=str(folder), degrade=DegradeConfig(gt_size=CROP), num_steps=10, **kw)


def test_config_checks():
    with pytest.raises(ConfigError, match="negatives.strength"):
        NegativesConfig(strength=0.0)
    with pytest.raises(ConfigError, match="negatives.num_steps"):
        NegativesConfig(num_steps=1, strength=0.5)
    with pytest.raises(ConfigError, match="negatives.degrade.gt_size"):
        NegativesConfig(degrade=DegradeConfig(gt_size=100, scale=4))
    with pytest.raises(ConfigError, match="negatives.prior"):
        NegativeMaker(NegativesConfig())
    assert sdedit_start(30, 0.5) == 15 and sdedit_start(30, 1.0) == 0 and sdedit_start(10, 0.55) == 5
    assert NegativesConfig().prompt == NEGATIVE_QUALITY_PROMPT


@pytest.mark.slow
def test_rows_kind_caption_status(prior, batch):
    folder, p = prior
    out = NegativeMaker(_cfg(folder), prior=p)(batch)
    table = conform("pairs", __import__("pyarrow").table({k: list(v) for k, v in out.items()}))
    assert table.num_rows == 4
    assert list(out["kind"]) == [KIND] * 4
    assert list(out["caption"]) == [NEGATIVE_QUALITY_PROMPT] * 4
    assert list(out["status"]) == ["ok", "ok", "decode_error", "ok"]
    assert out["error"][2] and out["hq"][2] is None
    assert out["pair_id"][0] == pair_id_of("img-a", "negative", "src-img-a/0")
    for i in (0, 1, 3):
        hq, lq = Image.open(io.BytesIO(out["hq"][i])), Image.open(io.BytesIO(out["lq"][i]))
        assert hq.size == (CROP, CROP) and lq.size == (CROP // 4, CROP // 4) and out["scale"][i] == 4
        params = json.loads(out["params"][i])
        assert params["negative"]["strength"] == 0.5 and params["negative"]["source"] == batch["pair_id"][i]
        assert params["usm"] is None
        # the lq is the degrade stage's degradation of the stored sample: rebuilt from the row alone
        assert regenerate({"hq": out["hq"][i], "params": out["params"][i]}) == out["lq"][i]


@pytest.mark.slow
def test_deterministic_for_a_seed(prior, batch):
    folder, p = prior
    a = NegativeMaker(_cfg(folder), prior=p)(batch)
    again = NegativeMaker(_cfg(folder), prior=p)(batch)  # a new maker: the same bytes
    assert list(a["hq"]) == list(again["hq"]) and list(a["lq"]) == list(again["lq"])
    # another batch composition: each pair's noise is its own, so only float rounding of the
    # batched convolutions can differ (at most a few 8-bit levels)
    sub = {k: v[[3, 0]] for k, v in batch.items()}
    b = NegativeMaker(_cfg(folder, batch_size=1), prior=p)(sub)
    for i, j in ((0, 3), (1, 0)):
        x = np.asarray(Image.open(io.BytesIO(b["hq"][i])), dtype=np.int16)
        y = np.asarray(Image.open(io.BytesIO(a["hq"][j])), dtype=np.int16)
        assert np.abs(x - y).max() <= 3
    c = NegativeMaker(_cfg(folder, seed=1), prior=p)(sub)
    assert c["hq"][0] != b["hq"][0]


@pytest.mark.slow
def test_sdedit_half_strength_stays_closer_to_source_than_noise(prior, photos):
    """Strength 0.5 keeps the source's layout; strength 1 (pure noise start) does not."""
    folder, p = prior
    model = PriorModel(p)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(_png_crop(ph, top=200 + 40 * k))),
                                                 dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
                     for k, ph in enumerate(photos[:4])])  # (4, 3, 64, 64)
    f = model.vae_scale_factor
    noise = torch.randn((4, 4, CROP // f, CROP // f), generator=torch.Generator().manual_seed(0))
    cfg = _cfg(folder)
    half = sdedit(model, x, noise, cfg, strength=0.5)
    full = sdedit(model, x, noise, cfg, strength=1.0)
    recon = model.decode(model.encode(x)).float().clamp(-1, 1)  # the VAE's ceiling D(E(x))
    d_half, d_full = float(psnr(half, x).mean()), float(psnr(full, x).mean())
    r_half, r_full = float(psnr(half, recon).mean()), float(psnr(full, recon).mean())
    print(json.dumps({"psnr_to_source_strength_0.5": d_half, "psnr_to_source_strength_1.0": d_full,
                      "psnr_to_vae_recon_strength_0.5": r_half, "psnr_to_vae_recon_strength_1.0": r_full,
                      "psnr_vae_recon_to_source": float(psnr(recon, x).mean())}))
    # measured with the test prior: 16.2 vs 11.5 dB to the source (its VAE alone: 17.0 dB on these
    # 64 px crops), 25.3 vs 13.8 dB to D(E(x)), the most any sample of this prior can match
    assert d_half > d_full + 1.0
    assert r_half > r_full + 5.0
    assert not torch.equal(half, recon)  # it did change the image


@pytest.mark.slow
def test_images_source_and_same_lq(prior, photos):
    folder, p = prior
    raw = [photos[0].read_bytes(), b"not an image"]
    batch = {"image_id": _objects(["a", "b"]), "bytes": _objects(raw)}
    out = NegativeMaker(_cfg(folder, lq="same", variants_per_image=2, source="images"), prior=p)(batch)
    assert list(out["status"]) == ["ok", "ok", "decode_error", "decode_error"]
    assert out["lq"][0] == out["hq"][0] and list(out["scale"]) == [1] * 4
    assert out["pair_id"][0] != out["pair_id"][1]
    crops = [json.loads(out["params"][i])["negative"]["crop"] for i in (0, 1)]
    assert crops[0] != crops[1]


# ---------------------------------------------------------------------------------------------
# the pipeline: stage 0 cached by digest, negatives into `pairs/negative` beside `pairs/degraded`

@pytest.mark.slow
@pytest.mark.ray
def test_pipeline_prior_and_negatives(tmp_path, photos, request):
    import pyarrow as pa
    import pyarrow.compute as pc
    from mlflow import MlflowClient

    from catalog.lake import Lake
    from catalog.schemas import image_id_of
    from catalog.tracking import Tracker, TrackingConfig
    from model.config import ModelConfig
    from pipelines.common import Context
    from pipelines.config import RayConfig, RunConfig
    from pipelines.prior import run_negatives, run_prior
    from stages.degrade import DegradeConfig, Degrader
    from stages.prior_train import read_stage0
    from stages.prior_train_config import PriorTrainConfig

    torch_threads(1)
    lake = Lake(str(tmp_path / "lake"))
    data = [p.read_bytes() for p in photos[:3]] + [b"not an image"]
    ids = [image_id_of(d) for d in data]
    lake.write_part("images", pa.table({"image_id": ids, "url": [f"file:///{i}" for i in range(4)],
                                        "status": ["ok"] * 4, "bytes": data}))
    lake.write_part("filtered", pa.table({"image_id": ids, "keep": [True, True, False, True]}))
    degraded = Degrader(DegradeConfig(gt_size=64))({"image_id": _objects(ids[:2]), "bytes": _objects(data[:2])})
    lake.write_part("pairs/degraded", pa.table({k: list(v) for k, v in degraded.items()}))

    cfg = RunConfig(
        lake=str(tmp_path / "lake"), tracking=TrackingConfig(experiment="prior-test"),
        degrade=DegradeConfig(gt_size=CROP),  # the negatives take the run's degrade section (like_pairs)
        ray=RayConfig(num_cpus=2, progress_bars=False), model=ModelConfig(prior="train"),
        prior_train=PriorTrainConfig(vae_steps=3, unet_steps=3, crop_size=32, batch_size=2, eval_crops=2,
                                     sample_num_steps=2, num_threads=1, progress=False),
        negatives=NegativesConfig(num_steps=4, rows_per_batch=2),
        split=SplitConfig(heldout_fraction=0.0, min_heldout=0))  # every photo in the train split: stage 0 sees all
    tracker = Tracker(cfg.tracking, cfg.lake)
    ctx = Context(cfg, lake, tracker)
    with tracker.pipeline("prior-test", {}):
        # before Ray starts, stage 0 trains in this process (with Ray up it is one Ray task: the
        # same function, and on this CPU box a worker that imports torch costs a minute)
        prior = run_prior(ctx)
        assert prior.startswith(str(tmp_path / "lake" / "priors" / "tiny-"))
        stamp = (Path(prior) / "stage0.json").stat().st_mtime_ns
        assert read_stage0(prior)["images"] == {"train": 1, "heldout": 1, "undecodable": 1}
    request.getfixturevalue("ray_local")  # Ray from here on (shut down after the module)
    with tracker.pipeline("prior-test", {}):
        assert run_prior(ctx) == prior and (Path(prior) / "stage0.json").stat().st_mtime_ns == stamp  # cached
        counts = run_negatives(ctx, prior)
        assert counts == {"ok": 2, "decode_error": 1}
        assert run_negatives(ctx, prior) == counts  # cached: manifest of pairs/negative
        assert lake.manifest("pairs/negative")["spec"]["stage"] == "negatives"
    pairs = lake.read("pairs", columns=["kind", "status", "caption"])
    assert sorted(pairs.column("kind").to_pylist()) == ["degraded", "degraded", "negative", "negative", "negative"]
    neg = pairs.filter(pc.equal(pairs.column("kind"), "negative"))
    assert set(neg.column("caption").to_pylist()) == {NEGATIVE_QUALITY_PROMPT}
    client = MlflowClient(tracker.uri)
    runs = client.search_runs([tracker.experiment_id], "tags.stage = 'negatives'")
    assert any(a.path == "negatives_grid.png" for r in runs for a in client.list_artifacts(r.info.run_id))


def test_cli_is_the_run_config_limited_to_prior_and_negatives(capsys):
    """pipelines/prior.py is full.py's runner over its two stages: the whole run config, checked whole."""
    from pipelines.full import main
    from pipelines.prior import GROUP

    demo = str(ROOT / "configs" / "demo.yaml")
    assert main(["--config", demo, "--plan", "lake=/nonexistent-lake"], only=GROUP) == 0
    plan = capsys.readouterr().out.split("stages (")[1]
    assert [line.strip() for line in plan.splitlines()[1:] if line.startswith("  ") and line[2] != " "] == list(GROUP)
    assert main(["--config", demo, "--plan", "negatives.strenght=0.5"], only=GROUP) == 2
    assert "negatives.strenght" in capsys.readouterr().err
    assert main(["--config", demo, "--print-config", "stages=[prior]"], only=GROUP) == 0
    out = capsys.readouterr().out
    assert "\nstages: [prior]" in out and "\ndegrade:" in out  # every section: negatives follow its degrade
