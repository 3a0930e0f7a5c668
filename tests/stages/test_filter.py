"""filter: gates with reasons, sharpness, pHash near duplicates (against brute force), IQA via pyiqa."""
import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from catalog.config import ConfigError, from_dict
from stages.filter import FilterConfig, Filterer, check_iqa_available, near_duplicates, phash, sharpness


def _jpeg(img, q=90):
    b = io.BytesIO()
    img.save(b, "JPEG", quality=q)
    return b.getvalue()


def _batch(datas):
    return {"image_id": np.array([f"id{i}" for i in range(len(datas))], dtype=object),
            "url": np.array([f"u{i}" for i in range(len(datas))], dtype=object),
            "bytes": np.array(datas, dtype=object)}


def test_sharpness_falls_with_blur(photos):
    img = Image.open(photos[0]).convert("L").resize((512, 512))
    sharp = sharpness(np.asarray(img, dtype=np.float32))
    blurred = sharpness(np.asarray(img.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32))
    assert blurred < sharp / 4


def test_gates_give_reasons(photos):
    img = Image.open(photos[0]).convert("RGB")
    small = img.resize((300, 200))
    wide = img.resize((900, 300))
    blurry = img.filter(ImageFilter.GaussianBlur(8))
    cfg = from_dict(FilterConfig, {"min_side": 256, "max_aspect": 2.0, "min_sharpness": 20.0})
    out = Filterer(cfg)(_batch([_jpeg(img), _jpeg(small), _jpeg(wide), _jpeg(blurry), b"not an image"]))
    reasons = [r.split(":")[0] if r else None for r in out["reason"]]
    assert reasons == [None, "min_side", "max_aspect", "sharpness", "decode_error"]
    assert list(out["keep"]) == [True, False, False, False, False]
    assert out["width"][0] == img.width and out["height"][0] == img.height
    assert out["reason"][1] == "min_side:200<256"


def test_iqa_gate_matches_pyiqa(photos):
    import pyiqa
    import torch

    cfg = from_dict(FilterConfig, {"min_side": 64, "sharpness_side": 128, "iqa": {"piqe": {"max": 1000.0}}})
    img = Image.open(photos[1]).convert("RGB")
    out = Filterer(cfg)(_batch([_jpeg(img, 95)]))
    # oracle: pyiqa's own call on the same resized image
    small = Image.open(io.BytesIO(_jpeg(img, 95))).convert("RGB")
    s = 128 / min(small.size)
    small = small.resize((round(small.width * s), round(small.height * s)), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expect = float(pyiqa.create_metric("piqe", device="cpu")(x))
    assert out["iqa_piqe"][0] == pytest.approx(expect, rel=1e-6)
    strict = from_dict(FilterConfig, {"min_side": 64, "sharpness_side": 128, "iqa": {"piqe": {"max": expect - 1}}})
    assert Filterer(strict)(_batch([_jpeg(img, 95)]))["reason"][0].startswith("iqa_piqe:")


def test_iqa_config_errors():
    with pytest.raises(ConfigError, match="unknown pyiqa metric"):
        check_iqa_available(from_dict(FilterConfig, {"iqa": {"no_such_metric": {"min": 1}}}))
    with pytest.raises(ConfigError, match="weights are not available"):
        check_iqa_available(from_dict(FilterConfig, {"iqa": {"musiq": {"min": 50}}}))
    with pytest.raises(ConfigError, match="filter.iqa.piqe"):
        from_dict(FilterConfig, {"iqa": {"piqe": {}}})
    with pytest.raises(ConfigError, match="filter.max_aspect = 0.5"):
        from_dict(FilterConfig, {"max_aspect": 0.5})


def test_phash_finds_recompressed_copies(photos):
    imgs = [Image.open(p).convert("RGB") for p in photos[:6]]
    h = [phash(i) for i in imgs]
    copies = [phash(Image.open(io.BytesIO(_jpeg(i.resize((i.width // 2, i.height // 2)), 60)))) for i in imgs]
    dist = lambda a, b: bin(int(a, 16) ^ int(b, 16)).count("1")
    assert all(dist(a, b) <= 4 for a, b in zip(h, copies))
    assert all(dist(h[i], h[j]) > 4 for i in range(6) for j in range(i + 1, 6))
    ids = [f"o{i}" for i in range(6)] + [f"c{i}" for i in range(6)]
    rank = [(0, i) for i in range(12)]  # originals first
    assert near_duplicates(ids, h + copies, rank, 4) == {f"c{i}": f"o{i}" for i in range(6)}


@pytest.mark.parametrize("distance", [0, 3, 6])
def test_near_duplicates_equals_brute_force(distance):
    rng = random.Random(distance)
    base = [rng.getrandbits(64) for _ in range(60)]
    hashes = base + [b ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for b in base[:40]]
    hexes = [f"{h:016x}" for h in hashes]
    ids = [str(i) for i in range(len(hashes))]
    rank = list(range(len(hashes)))
    kept, brute = [], {}
    for i in range(len(hashes)):  # the same greedy rule, comparing against every kept hash
        m = next((j for j in kept if bin(hashes[i] ^ hashes[j]).count("1") <= distance), None)
        if m is None:
            kept.append(i)
        else:
            brute[ids[i]] = ids[m]
    got = near_duplicates(ids, hexes, rank, distance)
    assert set(got) == set(brute)
    assert all(bin(hashes[int(k)] ^ hashes[int(v)]).count("1") <= distance for k, v in got.items())
    assert near_duplicates(ids, hexes, rank, -1) == {}
