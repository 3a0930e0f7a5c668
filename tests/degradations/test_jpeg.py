"""Real-ESRGAN's JPEG codec (degradations/jpeg.py) against independent oracles: libjpeg's tables
(through Pillow), a numpy / scipy block codec written from the same equations, and libjpeg itself."""
import io
import math

import numpy as np
import pytest
import scipy.fft
import torch
from PIL import Image

from degradations import jpeg as J
from degradations import ops


def _pillow_tables(q: int) -> list[np.ndarray]:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 160, 30)).save(buf, format="JPEG", quality=q)
    return [np.asarray(t).reshape(8, 8) for t in Image.open(buf).quantization.values()]


@pytest.mark.parametrize("q", [1, 7, 30, 33, 49, 50, 62, 77, 95, 100])
def test_quality_factor_and_tables_are_libjpegs(q):
    """libjpeg scales the Annex K tables by 5000 / q (integer) or 200 - 2q percent, rounds and clips:
    done to our float tables, that gives Pillow's tables exactly."""
    scale = math.floor(J.quality_factor(q) * 100 + 1e-9)
    for ours, theirs in zip((np.asarray(J._LUMA), np.asarray(J._CHROMA)), _pillow_tables(q)):
        np.testing.assert_array_equal(np.clip((ours * scale + 50) // 100, 1, 255), theirs)


def _reference(x: np.ndarray, q: float) -> np.ndarray:
    """The same codec in numpy: scipy's orthonormal DCT, reshape-mean pooling, np.repeat upsampling."""
    h, w, _ = x.shape
    xp = np.zeros((h + (-h) % 16, w + (-w) % 16, 3))
    xp[:h, :w] = np.clip(x, 0, 1) * 255
    ycc = xp @ np.asarray(J._RGB2YCC).T + [0, 128, 128]
    f = J.quality_factor(q)

    def code(plane, table):
        b = plane.reshape(plane.shape[0] // 8, 8, plane.shape[1] // 8, 8).swapaxes(1, 2) - 128
        c = scipy.fft.dctn(b, type=2, norm="ortho", axes=(-2, -1))
        c = np.round(c / (table.T * f)) * (table.T * f)
        b = scipy.fft.idctn(c, type=2, norm="ortho", axes=(-2, -1)) + 128
        return b.swapaxes(1, 2).reshape(plane.shape)

    y = code(ycc[..., 0], np.asarray(J._LUMA, dtype=float))
    hp, wp = ycc.shape[:2]
    chroma = [ycc[..., k].reshape(hp // 2, 2, wp // 2, 2).mean(axis=(1, 3)) for k in (1, 2)]
    cb, cr = (np.repeat(np.repeat(code(c, np.asarray(J._CHROMA, dtype=float)), 2, 0), 2, 1) - 128 for c in chroma)
    rgb = np.stack([y, cb, cr], -1) @ np.asarray(J._YCC2RGB).T
    return np.clip(rgb, 0, 255)[:h, :w] / 255


@pytest.mark.parametrize("size, q", [((32, 48), 30), ((37, 50), 47.3), ((83, 21), 95)])
def test_codec_matches_numpy_reference(size, q):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial correlation, as in a photo
    ref = _reference(x[0].permute(1, 2, 0).numpy(), q)
    ours = J.jpeg(x, q)[0].permute(1, 2, 0).numpy()
    assert ours.shape == ref.shape
    # float64 on both sides: only a coefficient exactly at a rounding boundary could differ
    np.testing.assert_allclose(ours, ref, atol=1e-9)


@pytest.mark.parametrize("q", [30, 62, 95])
def test_zero_padding_rings_only_at_the_padded_edge(q):
    """A flat 40x37 colour: libjpeg (edge replication) keeps it within its DC quantisation step;
    ours pads with black to 48x48, so the blocks that straddle the padding ring, and only those."""
    x = torch.tensor([0.8, 0.6, 0.4]).view(1, 3, 1, 1).expand(1, 3, 40, 37).contiguous()
    ours, lib = (J.jpeg(x, q) - x).abs() * 255, (ops.jpeg(x, q) - x).abs() * 255
    # a flat block's only error is its DC: at most half a step, T[0, 0] * factor / 2, spread over 8
    # pixels per axis (/ 16 in all); R and B add 1.402 Cr and 1.772 Cb to Y
    f = J.quality_factor(q)
    bound = (J._LUMA[0][0] + 1.772 * J._CHROMA[0][0]) * f / 16
    assert lib.max() <= bound + 1.0 + 1e-3  # libjpeg also rounds its YCbCr to integers
    assert ours[..., :32, :32].max() <= bound + 1e-3  # full 16x16 macroblocks: DC error only
    assert ours[..., 32:, :].max() > 5 * (bound + 1.0) and ours[..., :, 32:].max() > 5 * (bound + 1.0)
