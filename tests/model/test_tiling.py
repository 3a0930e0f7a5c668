"""Tiled sampling, tiled VAE and the colour fix."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import tiling
from model.colorfix import adain_color_fix, color_fix, wavelet_color_fix
from model.sampler import GuidedDenoiser, SamplerConfig, sample, sampling_sigmas, seeded_generator
from model.tiling import TiledDenoiser, TilingConfig, gaussian_weights, tile_boxes, tile_starts, tiled_apply
from catalog.config import ConfigError
from tests.support.sampler_models import TinyEps, text

CFG = SamplerConfig(num_steps=6)


def run(denoiser_of, shape, seed=0):
    """The full sampler (churn, CFG, restoration guidance) with a given denoiser wrapper."""
    g = torch.Generator().manual_seed(seed)
    noise, z_lq = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    z_lq = F.avg_pool2d(z_lq, 5, 1, 2, count_include_pad=False)  # smooth, like a real latent
    inner = GuidedDenoiser(TinyEps(), CFG, text(shape[0], 1), text(shape[0], 2))
    return sample(denoiser_of(inner), noise, sampling_sigmas(CFG.num_steps), CFG, z_lq=z_lq, z_center=z_lq,
                  generator=seeded_generator(seed, "img"))


def test_tile_layout():
    assert tile_starts(100, 128, 64) == [0]
    assert tile_starts(128, 128, 64) == [0]
    assert tile_starts(200, 128, 64) == [0, 64, 72]
    assert tile_starts(256, 128, 64) == [0, 64, 128]
    boxes = tile_boxes(40, 70, 32, 16)
    covered = torch.zeros(40, 70)
    for y0, y1, x0, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (32, 32)
        covered[y0:y1, x0:x1] = 1
    assert covered.all()
    w = gaussian_weights(128, 128)
    assert w[63, 63] == pytest.approx(w[64, 64]) and w.max() <= 1
    # variance 0.01 * tile^2: one standard deviation (12.8 px) from the centre the weight is exp(-1/2)
    c = (128 - 1) / 2
    row = gaussian_weights(1, 128)[0]
    x = torch.arange(128.0)
    torch.testing.assert_close(row, torch.exp(-((x - c) ** 2) / (2 * 0.01 * 128 ** 2)))


def test_one_tile_covering_the_latent_equals_untiled():
    shape = (1, 4, 24, 32)
    untiled = run(lambda d: d, shape)
    for tile in (32, 40):
        tiled = run(lambda d: TiledDenoiser(d, tile_size=tile, tile_stride=16), shape)
        # the blend divides by its own weight sum: float32 round-off of a few 1e-7 over the steps
        torch.testing.assert_close(tiled, untiled, rtol=1e-5, atol=1e-5)


def test_each_tile_sees_its_slice_of_one_noise_tensor():
    """Step 0: every tile's input is the slice of the untiled x_hat (the same churn noise)."""
    seen = {}

    def recorder(tag):
        def den(x, z, sh, s):
            seen.setdefault(tag, []).append(x.clone())
            return torch.zeros_like(x)
        return den

    shape = (1, 4, 40, 56)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    cfg = SamplerConfig(num_steps=2, tau_r=0.0)
    sample(recorder("full"), noise, sampling_sigmas(2), cfg, generator=seeded_generator(0, "k"))
    sample(TiledDenoiser(recorder("tiles"), 24, 16), noise, sampling_sigmas(2), cfg, generator=seeded_generator(0, "k"))
    boxes = tile_boxes(40, 56, 24, 16)
    assert len(boxes) == 2 * 3
    for (y0, y1, x0, x1), x in zip(boxes, seen["tiles"][: len(boxes)]):
        torch.testing.assert_close(x, seen["full"][0][..., y0:y1, x0:x1], rtol=0, atol=0)


def border_excess(out, ref, borders, dim):
    """How far the step of the mean profile at tile borders exceeds the untiled image's own step there."""
    profile = lambda t: t.mean(dim=tuple(d for d in range(4) if d != dim))
    d_out, d_ref = profile(out).diff().abs(), profile(ref).diff().abs()
    return max(float(d_out[b] - d_ref[b]) for b in borders), float(d_ref.std())


def test_several_tiles_leave_no_seams(monkeypatch):
    shape, tile, stride = (1, 4, 64, 96), 32, 16
    untiled = run(lambda d: d, shape)
    tiled = run(lambda d: TiledDenoiser(d, tile, stride), shape)
    rows = sorted({b for y0, y1, _, _ in tile_boxes(64, 96, tile, stride) for b in (y0 - 1, y1 - 1) if 0 <= b < 63})
    cols = sorted({b for _, _, x0, x1 in tile_boxes(64, 96, tile, stride) for b in (x0 - 1, x1 - 1) if 0 <= b < 95})
    excess_r, own_r = border_excess(tiled, untiled, rows, 2)
    excess_c, own_c = border_excess(tiled, untiled, cols, 3)
    assert excess_r < 0.05 * own_r and excess_c < 0.05 * own_c, (excess_r, own_r, excess_c, own_c)
    assert (tiled - untiled).abs().max() < 0.05 * untiled.abs().max()

    # the measure sees seams: hard tiles (no overlap, flat weights) leave steps at their borders
    monkeypatch.setattr(tiling, "gaussian_weights", lambda h, w, device=None: torch.ones(h, w, device=device))
    hard = run(lambda d: TiledDenoiser(d, tile, tile), shape)
    hard_rows = [tile - 1]
    hard_cols = [tile - 1, 2 * tile - 1]
    assert border_excess(hard, untiled, hard_rows, 2)[0] > 0.05 * own_r
    assert border_excess(hard, untiled, hard_cols, 3)[0] > 0.05 * own_c


def test_tiled_vae_blending_is_exact_for_local_maps_and_one_tile_is_untiled():
    x = torch.randn(2, 3, 96, 136, generator=torch.Generator().manual_seed(0))
    encode = lambda t: F.avg_pool2d(t, 8)  # each output pixel sees one 8x8 block: tiling cannot change it
    decode = lambda z: F.interpolate(z, scale_factor=8, mode="nearest")
    torch.testing.assert_close(tiled_apply(encode, x, 64, 16, 1 / 8), encode(x), rtol=1e-6, atol=1e-6)
    z = encode(x)
    torch.testing.assert_close(tiled_apply(decode, z, 8, 2, 8), decode(z), rtol=1e-6, atol=1e-6)
    conv = lambda t: F.conv2d(t, torch.ones(3, 1, 3, 3) / 9, padding=1, groups=3)
    assert torch.equal(tiled_apply(conv, x, 512, 64, 1), conv(x))  # fits in one tile
    with pytest.raises(ValueError, match="whole pixels"):
        tiled_apply(encode, x[..., :92, :], 60, 16, 1 / 8)


def test_tiling_config_checks():
    with pytest.raises(ConfigError, match="tiling.tile_stride"):
        TilingConfig(tile_size=64, tile_stride=80)
    with pytest.raises(ConfigError, match="tiling.encoder_tile_size"):
        TilingConfig(encoder_tile_size=500)


# ---------------------------------------------------------------------------------------------
# colour fix

def bands(x: torch.Tensor, low_cycles: int, high_cutoff: float):
    """Ideal FFT bands: frequencies of at most ``low_cycles`` cycles per image side (DC included), and
    at least ``high_cutoff`` cycles per pixel."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h)[:, None].abs()
    fx = torch.fft.fftfreq(w)[None, :].abs()
    spec = torch.fft.fft2(x.double())
    low = (fy * h <= low_cycles) & (fx * w <= low_cycles)
    high = torch.maximum(fy, fx) >= high_cutoff
    return torch.fft.ifft2(spec * low).real, torch.fft.ifft2(spec * high).real


def test_wavelet_color_fix_takes_low_frequencies_from_the_reference():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(256) / 256 * 2 * torch.pi  # periodic signals, so that the FFT bands are clean
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    reference = torch.stack([0.3 * torch.sin(xx), 0.2 * torch.cos(yy), 0.1 * torch.sin(xx + yy) - 0.2])[None]
    cast = torch.tensor([0.25, -0.15, 0.1])[None, :, None, None] + 0.2 * torch.cos(yy)  # colour cast + slow wave
    texture = 0.2 * torch.randn(1, 3, 256, 256, generator=g)
    image = reference + cast + texture
    fixed = wavelet_color_fix(image, reference)

    # the mean colour (DC) is the reference's (up to the replicate padding at the borders; the cast was 0.1..0.35)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-3, rtol=0)
    low_fix, _ = bands(fixed - reference, low_cycles=1, high_cutoff=0.125)
    low_img, _ = bands(image - reference, low_cycles=1, high_cutoff=0.125)
    assert low_fix.norm() < 0.1 * low_img.norm()  # the lowest band: 10x closer to the reference
    _, high_err = bands(fixed - image, low_cycles=1, high_cutoff=0.125)
    _, high_img = bands(image, low_cycles=1, high_cutoff=0.125)
    assert high_err.norm() < 0.02 * high_img.norm()  # the detail is the image's (rest: replicate borders)
    # a reference of another size is resized first; "none" leaves the image alone
    assert wavelet_color_fix(image, reference[..., ::2, ::2]).shape == image.shape
    assert color_fix(image, reference, "none") is image


def test_adain_color_fix_matches_channel_statistics():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 32, 48, generator=g) * 0.5 + 0.3
    reference = torch.randn(2, 3, 32, 48, generator=g) * 0.2 - 0.1
    out = adain_color_fix(image, reference)
    torch.testing.assert_close(out.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3)), reference.std(dim=(2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(color_fix(image, reference, "adain"), out)
