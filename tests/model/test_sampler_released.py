"""The released inference script's settings (sampler.preset: released), each against a reference
written from its equation (../shared/supir/README.md lists them)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from catalog.config import ConfigError, from_dict
from model.sampler import (GuidedDenoiser, SamplerConfig, churn_gamma, discrete_sigmas, join_prompt, sample,
                           sampling_sigmas, seeded_generator, snap_sigma)
from model.tiling import TilingConfig, core_boxes, tile_boxes, tiled_apply
from stages.restore import RestoreConfig, Restorer
from tests.support.sampler_models import TinyEps, text

RELEASED = SamplerConfig(preset="released", num_steps=50)


def reference_train_sigmas() -> np.ndarray:
    """SDXL's 1000 training sigmas in float64, from the scaled-linear betas (DESIGN section 6)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)
    return np.sqrt((1 - abar) / abar)


def test_presets_fill_only_what_is_not_given():
    paper, released = SamplerConfig(), SamplerConfig(preset="released")
    assert (paper.sigma_snap, paper.tau_r, paper.s_noise, paper.size_conditioning, paper.prompt_separator) == \
        (False, 4.0, 1.003, 0, ", ")
    assert (released.sigma_snap, released.tau_r, released.s_noise, released.size_conditioning,
            released.prompt_separator) == (True, 0.0, 1.01, 1024, "")
    asked = from_dict(SamplerConfig, {"preset": "released", "tau_r": 4.0}, prefix="sampler")
    assert asked.tau_r == 4.0 and asked.sigma_snap  # the paper's tau_r stays available
    with pytest.raises(ConfigError, match="sampler.preset"):
        from_dict(SamplerConfig, {"preset": "official"}, prefix="sampler")
    r = RestoreConfig(model="-", sampler=SamplerConfig(preset="released"))
    assert (r.clamp_stage1, r.tiling.tiled_vae, r.tiling.vae_groupnorm, r.tiling.tiled_sampling) == \
        (False, False, "shared", False)
    p = RestoreConfig(model="-")
    assert (p.clamp_stage1, p.tiling.tiled_vae, p.tiling.vae_groupnorm, p.tiling.tiled_sampling) == \
        (True, True, "per_tile", True)
    forced = RestoreConfig(model="-", sampler=SamplerConfig(preset="released"), tiling=TilingConfig(tiled_vae=True))
    assert forced.tiling.tiled_vae and forced.tiling.vae_groupnorm == "shared"


def test_snapped_sigma_sequence_and_its_c_in_c_out_and_integer_timestep():
    train = reference_train_sigmas()
    sigmas = sampling_sigmas(50)
    gamma = churn_gamma(5.0, 50)
    seen = []

    class Recorder(nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq, conditioning_scale):
            seen.append((sample.clone(), timestep.clone()))
            return torch.full_like(sample, 0.5)

    den = GuidedDenoiser(Recorder(), RELEASED, text(1, 1), text(1, 2))
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for i in range(50):
        sigma_hat = float(sigmas[i]) * (1 + gamma)
        k = int(np.argmin(np.abs(train - sigma_hat)))  # reference: nearest training sigma
        s_q, t = snap_sigma(sigma_hat, discrete_sigmas())
        assert t == k and s_q == pytest.approx(train[k], rel=1e-5)
        seen.clear()
        out = den(x, None, sigma_hat, float(sigmas[i]))
        (inp, ts), = seen[:1]
        assert ts.dtype == torch.int64 and int(ts[0]) == k  # the integer index as timestep
        torch.testing.assert_close(inp[:1], x / math.sqrt(train[k] ** 2 + 1), rtol=1e-5, atol=1e-6)  # c_in
        # c_out = -sigma': CFG of two equal predictions is the prediction itself
        torch.testing.assert_close(out, x - train[k] * 0.5, rtol=1e-5, atol=1e-5)
    # step 0 with churn: sigma_hat = 16.08 runs at sigma_max = 14.6146, t = 999
    assert snap_sigma(float(sigmas[0]) * 1.1, discrete_sigmas()) == (pytest.approx(14.6146, abs=1e-4), 999)
    # the paper's setting: continuous sigma, a fractional timestep
    seen.clear()
    GuidedDenoiser(Recorder(), SamplerConfig(), text(1, 1), text(1, 2))(x, None, 16.08, 14.6146)
    assert seen[0][1].dtype == torch.float32


def test_s_noise_101_scales_the_churn_noise():
    cfg = SamplerConfig(preset="released", num_steps=4)
    sigmas = sampling_sigmas(4)
    first = {}

    def denoiser(x, z_lq, sigma_hat, sigma):
        first.setdefault("x_hat", x.clone())
        return torch.zeros_like(x)

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sample(denoiser, noise, sigmas, cfg, generator=seeded_generator(0, "a"))
    g = seeded_generator(0, "a")
    s0 = float(sigmas[0])
    x0 = noise * math.sqrt(1 + s0 ** 2)
    s_hat = s0 * (1 + churn_gamma(cfg.s_churn, 4))
    eps = torch.randn(noise.shape, generator=g)
    torch.testing.assert_close(first["x_hat"], x0 + math.sqrt(s_hat ** 2 - s0 ** 2) * 1.01 * eps)


def test_restoration_guidance_is_off_in_the_released_setting_unless_asked():
    shape = (1, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    noise, z_lq = torch.randn(shape, generator=g), torch.randn(shape, generator=g)

    def run(cfg, center):
        den = GuidedDenoiser(TinyEps(), cfg, text(1, 1), text(1, 2))
        return sample(den, noise, sampling_sigmas(cfg.num_steps), cfg, z_lq=z_lq, z_center=center,
                      generator=seeded_generator(0, "k"))

    released = SamplerConfig(preset="released", num_steps=5)
    torch.testing.assert_close(run(released, z_lq * 3), run(released, None), rtol=0, atol=0)
    asked = SamplerConfig(preset="released", num_steps=5, tau_r=4.0)
    assert (run(asked, z_lq * 3) - run(asked, None)).abs().max() > 1e-3


def test_prompt_joining():
    a = "Cinematic, High Contrast"
    assert join_prompt("A cat on a mat.", a, "") == "A cat on a mat.Cinematic, High Contrast"  # ''.join([c, a])
    assert join_prompt("A cat on a mat.", a, ", ") == "A cat on a mat., Cinematic, High Contrast"
    assert join_prompt("  ", a, "") == a and join_prompt(None, a, ", ") == a


def test_groupnorm_statistics_shared_across_tiles_equal_untiled():
    """A network of GroupNorms and pointwise ops: with shared statistics the tiled result equals
    the untiled one to 1e-5 (every pixel sees the same mean and variance); per-tile statistics don't."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 16, 1), nn.GroupNorm(8, 16))
    x = torch.randn(2, 16, 72, 56) * torch.linspace(0.5, 4, 56) + torch.linspace(-2, 3, 72)[:, None]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        ref = net(x)
        shared = tiled_apply(net, x, 32, 8, 1.0, shared_norm=net)
        per_tile = tiled_apply(net, x, 32, 8, 1.0)
    torch.testing.assert_close(shared, ref, rtol=1e-5, atol=1e-5)
    assert (per_tile - ref).abs().max() > 0.05
    # a GroupNorm over flattened tokens (B, C, h*w), as in the VAE's mid-block attention
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.GroupNorm(4, 16)

        def forward(self, t):
            return self.norm(t.flatten(2)).reshape(t.shape)

    tokens = Tokens()
    with torch.no_grad():
        torch.testing.assert_close(tiled_apply(tokens, x, 32, 8, 1.0, shared_norm=tokens), tokens(x),
                                   rtol=1e-5, atol=1e-5)
    # the cores partition the image: every pixel counted once in the statistics
    boxes = tile_boxes(72, 56, 32, 24)
    count = torch.zeros(72, 56)
    for (y0, _, x0, _), (a, b, c, d) in zip(boxes, core_boxes(boxes)):
        count[y0 + a:y0 + b, x0 + c:x0 + d] += 1
    assert (count == 1).all()


@pytest.fixture(scope="module")
def tiny():
    from model.config import ModelConfig
    from model.supir import build_model

    return build_model(ModelConfig(preset="tiny"))


def test_size_conditioning_fixed_at_1024_with_crop_00(tiny):
    released = Restorer(RestoreConfig(model="-", sampler=SamplerConfig(preset="released")), model=tiny).restoration
    pos, neg = released.conditioning("a house", 96, 64)
    assert pos.added_cond_kwargs["time_ids"].tolist() == [[1024, 1024, 0, 0, 1024, 1024]]
    assert neg.added_cond_kwargs["time_ids"].tolist() == [[1024, 1024, 0, 0, 1024, 1024]]
    paper = Restorer(RestoreConfig(model="-"), model=tiny).restoration
    assert paper.conditioning("a house", 96, 64)[0].added_cond_kwargs["time_ids"].tolist() == [[96, 64, 0, 0, 96, 64]]


def test_stage1_reference_is_unclamped_in_the_released_setting(tiny, monkeypatch):
    """x_stage1 = D(z_LQ) as it comes: a decode that overshoots [-1, 1] reaches the colour fix unclamped."""
    from PIL import Image

    import model.restoration as restoration_mod

    seen = []
    monkeypatch.setattr(restoration_mod, "color_fix", lambda out, ref, kind: seen.append(ref.abs().max().item()) or out)
    decode = tiny.decode
    monkeypatch.setattr(tiny, "decode", lambda z: decode(z) * 4.0)  # out of range on purpose
    img = Image.new("RGB", (64, 64), (200, 30, 90))
    fast = dict(model="-", min_size=64, progress=False)
    Restorer(RestoreConfig(sampler=SamplerConfig(preset="released", num_steps=1), **fast), model=tiny).restore(img, "k")
    Restorer(RestoreConfig(sampler=SamplerConfig(num_steps=1), **fast), model=tiny).restore(img, "k")
    assert seen[0] > 1.0 and seen[1] <= 1.0


def test_float16_restore_keeps_the_vae_in_float32():
    """SDXL's VAE config says force_upcast (it overflows in float16): the VAE and E_dr stay float32."""
    from PIL import Image

    from model.config import ModelConfig
    from model.supir import build_model

    model = build_model(ModelConfig(preset="tiny"))
    assert model.vae.config.force_upcast
    r = Restorer(RestoreConfig(model="-", dtype="float16", device="cpu", min_size=64, progress=False,
                               sampler=SamplerConfig(num_steps=1)), model=model)
    assert r.model.unet.dtype == torch.float16 and r.model.adaptor.dtype == torch.float16
    assert r.model.vae.dtype == torch.float32 and r.model.encoder.dtype == torch.float32
    out = np.asarray(r.restore(Image.new("RGB", (64, 64), (120, 60, 30)), "k"))
    assert out.shape == (64, 64, 3)


def test_restore_cli_sampler_preset_override():
    from pipelines.restore import load_run_config, parse_args

    def restore(*overrides):
        return load_run_config(parse_args(["--input", "i", "--output", "o", "restore.model=m", *overrides])).restore

    released = restore("restore.sampler.preset=released")
    assert released.sampler.preset == "released" and released.sampler.sigma_snap and not released.tiling.tiled_vae
    asked = restore("restore.sampler.preset=released", "restore.sampler.tau_r=4", "restore.sampler.s_noise=1.0")
    assert asked.sampler.tau_r == 4.0 and asked.sampler.s_noise == 1.0 and asked.sampler.sigma_snap
    assert restore().sampler.preset == "paper"
