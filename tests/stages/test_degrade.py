"""The degrade stage: real-codec JPEG, reproducible pairs, statuses, shapes, grids."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from catalog.schemas import PAIRS, image_id_of, pair_id_of
from evaluation.grids import make_grid
from degradations import jpeg as jpeg_codec
from degradations import ops
from stages.degrade import (Degrader, DegradeConfig, degrade_batch, degrade_files, degrade_pairs, draw_params, preview_grid,
                            regenerate)


def _tables(q: int) -> dict:
    """Pillow's own quantization tables for quality q (the oracle), from an unrelated image."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 160, 30)).save(buf, format="JPEG", quality=q)
    return Image.open(buf).quantization


def _quality_of(data: bytes) -> int:
    tables = Image.open(io.BytesIO(data)).quantization
    matches = [q for q in range(1, 101) if _tables(q) == tables]
    assert len(matches) == 1, matches
    return matches[0]


@pytest.fixture(scope="module")
def batch(photos):
    data = [p.read_bytes() for p in photos[:3]]
    return {
        "image_id": np.array([image_id_of(d) for d in data], dtype=object),
        "bytes": np.array(data, dtype=object),
        "caption": np.array(["a photo", None, "third"], dtype=object),
    }


def test_ijg_tables_are_the_oracle():
    assert _tables(50)[0][0] == 16  # IJG standard luminance table at quality 50
    assert _tables(30) != _tables(31)


def test_jpeg_steps_use_the_drawn_quality(monkeypatch, photos):
    """Every JPEG of the pipeline is coded at its drawn quality: with Real-ESRGAN's codec for
    params version 2, with libjpeg (quality read back from the tables) for version 1 and BSRGAN."""
    seen, coded = [], []
    encode, realesrgan_codec = ops.jpeg_encode, jpeg_codec.jpeg

    def spy(x, quality):
        data = encode(x, quality)
        seen.append((quality, _quality_of(data)))
        return data

    def spy_codec(x, quality):
        coded.append(quality)
        return realesrgan_codec(x, quality)

    monkeypatch.setattr(ops, "jpeg_encode", spy)
    monkeypatch.setattr(jpeg_codec, "jpeg", spy_codec)
    cfg = DegradeConfig(gt_size=128)
    crop = np.asarray(Image.open(photos[0]).convert("RGB"))[:128, :128]
    hq = ops.from_uint8(crop)
    for i in range(3):
        p = draw_params(cfg, pair_id_of("q", "degraded", i))
        assert p["version"] == 2
        seen.clear(), coded.clear()
        degrade_batch(hq, [p])
        assert coded == [p["jpeg1"], p["final"]["jpeg"]] and seen == []
        coded.clear()
        degrade_batch(hq, [p | {"version": 1}])  # pairs written before the codec: libjpeg, as then
        assert [q for q, _ in seen] == [p["jpeg1"], p["final"]["jpeg"]] and coded == []
        assert all(drawn == read for drawn, read in seen)
    p = draw_params(DegradeConfig(gt_size=128, recipe="bsrgan"), pair_id_of("q", "degraded"))
    seen.clear()
    degrade_batch(hq, [p])
    assert [q for q, _ in seen] == [o["quality"] for o in p["ops"] if o["op"] == "jpeg"] and coded == []
    assert all(drawn == read for drawn, read in seen)


def test_stage_rows_and_reproducibility(batch):
    cfg = DegradeConfig(gt_size=128, variants_per_image=2)
    out = Degrader(cfg)(batch)
    assert set(out) == set(PAIRS.names)
    assert len(out["pair_id"]) == 6 and set(out["status"]) == {"ok"}
    assert len(set(out["pair_id"])) == 6
    assert out["pair_id"][1] == pair_id_of(batch["image_id"][0], "degraded", 1)
    assert list(out["caption"]) == ["a photo", "a photo", None, None, "third", "third"]
    for i in range(6):
        hq, lq = Image.open(io.BytesIO(out["hq"][i])), Image.open(io.BytesIO(out["lq"][i]))
        assert hq.format == lq.format == "PNG" and hq.size == (128, 128) and lq.size == (32, 32)
        assert json.loads(out["params"][i])["pair_id"] == out["pair_id"][i]
    again = Degrader(cfg)(batch)
    for col in ("hq", "lq", "params"):
        assert list(again[col]) == list(out[col])
    # the two variants of one image differ
    assert out["lq"][0] != out["lq"][1] and out["params"][0] != out["params"][1]
    # a pair is rebuilt from its row alone
    row = {k: out[k][3] for k in out}
    assert regenerate(row) == row["lq"]


def test_degrade_files_is_the_stage_on_files(batch, photos):
    cfg = DegradeConfig(gt_size=128, variants_per_image=2)
    table = degrade_files(photos[:3], cfg, ["a photo", None, "third"])
    assert table.schema == PAIRS and table.num_rows == 6
    out = Degrader(cfg)(batch)
    for col in ("pair_id", "image_id", "hq", "lq", "params", "caption", "scale"):
        assert table.column(col).to_pylist() == list(out[col]), col
    assert degrade_files(photos[:1], cfg).column("caption").to_pylist() == [None, None]
    with pytest.raises(ValueError, match="captions: got 1 for 2 paths"):
        degrade_files(photos[:2], cfg, ["one"])


def test_regenerate_bsrgan_supir_mode(batch):
    cfg = DegradeConfig(recipe="bsrgan", gt_size=128, lq_resize_to_gt=True, seed=7)
    out = Degrader(cfg)(batch)
    assert set(out["status"]) == {"ok"}
    assert Image.open(io.BytesIO(out["lq"][0])).size == (128, 128)
    assert regenerate({k: out[k][0] for k in out}) == out["lq"][0]


def test_bad_inputs_get_a_status(photos):
    good = photos[0].read_bytes()
    small = io.BytesIO()
    Image.new("RGB", (100, 80)).save(small, format="PNG")
    data = [b"not an image", good[: len(good) // 3], small.getvalue(), good]
    batch = {"image_id": np.array([image_id_of(d) for d in data], dtype=object), "bytes": np.array(data, dtype=object)}
    out = Degrader(DegradeConfig(gt_size=128))(batch)  # no caption column: fine
    assert list(out["status"]) == ["decode_error", "decode_error", "too_small", "ok"]
    assert "100x80" in out["error"][2] and out["lq"][2] is None and out["error"][3] is None
    assert list(out["caption"]) == [None] * 4


def test_degrade_batch_shapes_and_grid():
    hq = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cfg = DegradeConfig(gt_size=64)
    params = [draw_params(cfg, pair_id_of("t", "degraded", i)) for i in range(2)]
    target, lq = degrade_pairs(hq, params)
    assert target.shape == (2, 3, 64, 64) and lq.shape == (2, 3, 16, 16)
    assert torch.equal(lq, (lq * 255).round() / 255) and 0 <= lq.min() and lq.max() <= 1
    assert torch.equal(degrade_batch(hq, params), lq)
    assert torch.equal(degrade_batch(hq[1:], params[1:]), lq[1:])  # independent of the batch
    supir = DegradeConfig(gt_size=64, lq_resize_to_gt=True)
    assert degrade_batch(hq, [draw_params(supir, "ab" * 16)] * 2).shape == (2, 3, 64, 64)


def test_noise_is_seeded_and_sized():
    x = torch.full((1, 3, 128, 128), 0.5)
    p = {"kind": "gaussian", "sigma": 20.0, "gray": False, "seed": 5}
    a = ops.add_noise(x, p)
    assert torch.equal(a, ops.add_noise(x, p))
    assert (a - x).std().item() == pytest.approx(20 / 255, rel=0.05)
    g = ops.add_noise(x, p | {"gray": True})
    assert torch.equal(g[:, 0], g[:, 2])
    # Poisson counts at 2^ceil(log2(levels)) = 256 photons per unit for an image with 256 levels
    ramp = torch.arange(256.0).div(255).repeat(3, 256, 1)[None]  # (1, 3, 256, 256)
    pois = ops.add_noise(ramp, {"kind": "poisson", "scale": 1.0, "gray": False, "seed": 5})
    mid = (pois - ramp)[..., 96:160]  # away from the clipping at 0 and 1
    assert mid.std().item() == pytest.approx(float(np.sqrt(0.5 / 256)), rel=0.1)


def test_make_grid_layout():
    rows = [[Image.new("RGB", (32, 32), "red"), Image.new("RGB", (128, 64), "blue")], [Image.new("L", (10, 10))]]
    g = make_grid(rows, ["LQ", "HQ"], cell=64)
    assert g.mode == "RGB" and g.width == 2 * 64 + 3 * 2 and g.height > 2 * 64
    assert make_grid(rows, None, cell=64).height == 2 * 64 + 3 * 2


def test_preview_grid(batch):
    out = Degrader(DegradeConfig(gt_size=64))(batch)
    assert preview_grid(out, n=2, cell=32).size[1] > 2 * 32


def test_params_name_their_recipe_for_the_metrics_table():
    """evaluate labels each pair by the recipe in its params: version 2 stores "recipe", version 1 "pipeline"."""
    from evaluation.baselines import degradation_label

    for recipe in ("realesrgan", "bsrgan"):
        p = draw_params(DegradeConfig(recipe=recipe, gt_size=64), pair_id_of("r", "degraded"))
        assert degradation_label(json.dumps(p), 4) == f"{recipe} x4"
        old = {k: v for k, v in p.items() if k != "recipe"} | {"pipeline": recipe, "version": 1}
        assert degradation_label(json.dumps(old), 4) == f"{recipe} x4"
