"""catalog/codec.py against Pillow as the oracle, and the stages that use it (restore's row
statuses and notes, the restore CLI's refusals)."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from catalog import codec
from tests.support.http_faults import huge_png


def jpeg_with_orientation(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def gradient(h=48, w=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=-1).astype(np.uint8)


def test_exif_orientation_is_applied_as_pillow_does():
    data = jpeg_with_orientation(gradient(), 6)  # stored landscape, shown portrait
    d = codec.decode(data)
    oracle = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert d.image.size == oracle.size == (48, 64) and d.size == (64, 48)
    assert np.array_equal(d.array(), np.asarray(oracle))
    assert d.notes == ["exif orientation 6 applied"]
    assert codec.decode(jpeg_with_orientation(gradient(), 1)).notes == []


def test_16_bit_grey_is_scaled_not_clipped():
    a16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, format="PNG")
    assert np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).mean() > 250  # Pillow alone: white
    d = codec.decode(buf.getvalue())
    expected = np.rint(a16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(d.array(), np.repeat(expected[..., None], 3, axis=-1))
    assert d.notes == ["16-bit samples scaled to 8-bit"]


def test_alpha_is_composited_over_white_or_dropped_and_said():
    rgba = np.concatenate([gradient(), np.full((48, 64, 1), 255, np.uint8)], axis=-1)
    rgba[:, :32, 3] = 0  # left half transparent
    rgba[:, 32:40, 3] = 128
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    im = Image.open(io.BytesIO(buf.getvalue()))
    oracle = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA")).convert("RGB")
    d = codec.decode(buf.getvalue())
    assert np.array_equal(d.array(), np.asarray(oracle)) and d.notes == ["alpha composited over white"]
    assert (d.array()[:, :32] == 255).all()
    dropped = codec.decode(buf.getvalue(), alpha="drop")
    assert np.array_equal(dropped.array(), rgba[..., :3]) and dropped.notes == ["alpha dropped"]
    opaque = rgba.copy()
    opaque[..., 3] = 255
    buf = io.BytesIO()
    Image.fromarray(opaque, "RGBA").save(buf, format="PNG")
    assert codec.decode(buf.getvalue()).notes == []  # an alpha channel that hides nothing is not news


def test_a_header_claiming_100_megapixels_is_refused_before_decoding():
    data = huge_png(10_000, 10_000)
    assert len(data) < 100_000
    start = time.perf_counter()
    with pytest.raises(codec.DecodeError) as e:
        codec.decode(data, max_pixels=16_000_000)
    assert e.value.status == "too_large" and "10000x10000" in str(e.value)
    assert time.perf_counter() - start < 1.0  # a hang guard: decoding would allocate 100 MP
    assert codec.header_size(data) == (10_000, 10_000)


def test_corrupt_data_is_a_decode_error_without_its_content():
    with pytest.raises(codec.DecodeError) as e:
        codec.decode(b"root:x:0:0:root:/root:/bin/bash\n")
    assert e.value.status == "decode_error" and "root:x" not in str(e.value)
    good = codec.encode_png(gradient())
    with pytest.raises(codec.DecodeError):
        codec.decode(good[: len(good) // 2])


def test_png_round_trip_is_exact():
    arr = gradient()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(codec.encode_png(arr)))), arr)
    assert np.array_equal(codec.decode_array(codec.encode_png(Image.fromarray(arr), compress_level=1)), arr)


def test_every_stage_decodes_through_the_codec():
    """filter, caption, degrade and training see the same upright, scaled pixels."""
    from stages.caption import decode_image as caption_decode
    from stages.degrade import decode_rgb as degrade_decode
    from stages.filter import FilterConfig, Filterer
    from stages.train_data import decode as train_decode

    rotated = jpeg_with_orientation(gradient(), 6)
    upright = codec.decode_array(rotated)
    assert np.array_equal(degrade_decode(rotated), upright)
    assert np.array_equal(train_decode(rotated), upright)
    assert caption_decode(rotated, 48).size == (48, 64)  # portrait, as shown
    row = Filterer(FilterConfig(min_side=1, max_aspect=10.0)).one(rotated)
    assert (row["width"], row["height"]) == (48, 64)

    a16 = np.full((48, 64), 30000, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a16).save(buf, format="PNG")
    grey = buf.getvalue()
    for decoded in (degrade_decode(grey), train_decode(grey), np.asarray(caption_decode(grey, 48))):
        assert (decoded == round(30000 * 255 / 65535)).all()  # not white
