"""The restoration-guided EDM sampler: diffusers' Euler scheduler as the oracle, then each term."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from catalog.config import ConfigError, from_dict
from model.sampler import (
    Conditioning,
    GuidedDenoiser,
    SamplerConfig,
    cfg_scale_at,
    churn_gamma,
    control_scale_at,
    discrete_sigmas,
    restoration_guidance,
    restoration_weight,
    sample,
    sampling_sigmas,
    seeded_generator,
    sigma_to_t,
    step_timesteps,
)
from tests.support.sampler_models import TinyEps, text

SHAPE = (2, 4, 12, 16)  # (B, C, h, w)
SIGMA_MAX = float(discrete_sigmas()[-1])


def sdxl_euler(spacing: str = "trailing") -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="epsilon",
                                  timestep_spacing=spacing, use_karras_sigmas=False)


def plain(**kw) -> SamplerConfig:
    """No CFG, no restoration guidance, no churn unless given."""
    return SamplerConfig(**{"s_churn": 0.0, "cfg_scale": 1.0, "cfg_scale_start": 1.0, "tau_r": 0.0, **kw})


def trajectory(cfg: SamplerConfig, model, noise, cond, z_lq, generator=None) -> list[torch.Tensor]:
    steps = []
    sample(GuidedDenoiser(model, cfg, cond), noise, sampling_sigmas(cfg.num_steps), cfg, z_lq=z_lq,
           generator=generator, callback=lambda i, x: steps.append(x.clone()))
    return steps


# ---------------------------------------------------------------------------------------------
# schedule

def test_sigma_max_and_schedule_match_diffusers_trailing():
    assert discrete_sigmas()[-1].item() == pytest.approx(14.6146, abs=1e-4)
    for n in (1, 7, 10, 20, 25, 50, 100, 200, 1000):  # equal when rounding agrees (N | 1000 and more)
        sched = sdxl_euler()
        sched.set_timesteps(n)
        np.testing.assert_array_equal(step_timesteps(n), sched.timesteps.numpy().astype(np.int64))
        torch.testing.assert_close(sampling_sigmas(n), sched.sigmas, rtol=0, atol=0)
    for n in (3, 12, 30, 333):  # floor vs round: at most one training step apart
        sched = sdxl_euler()
        sched.set_timesteps(n)
        assert np.abs(step_timesteps(n) - sched.timesteps.numpy()).max() <= 1


def test_sigma_to_t_matches_diffusers():
    sched = sdxl_euler()
    log_sigmas = np.log(discrete_sigmas().numpy())
    sigmas = np.concatenate([np.geomspace(1e-3, 20.0, 97), discrete_sigmas().numpy()[::37]]).astype(np.float32)
    ref = np.array([sched._sigma_to_t(np.array(s), log_sigmas) for s in sigmas])
    np.testing.assert_allclose(sigma_to_t(torch.from_numpy(sigmas), discrete_sigmas()).numpy(), ref, atol=2e-4)
    # exact on the grid, clipped outside it
    assert sigma_to_t(discrete_sigmas()[500], discrete_sigmas()).item() == pytest.approx(500, abs=1e-3)
    assert sigma_to_t(20.0, discrete_sigmas()).item() == 999
    assert sigma_to_t(1e-4, discrete_sigmas()).item() == 0


# ---------------------------------------------------------------------------------------------
# oracle: diffusers' EulerDiscreteScheduler

def test_trajectory_equals_diffusers_euler_without_churn():
    cfg = plain(num_steps=12)
    model, cond = TinyEps(), text(SHAPE[0])
    g = torch.Generator().manual_seed(1)
    noise, z_lq = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    ours = trajectory(cfg, model, noise, cond, z_lq)

    sched = sdxl_euler()
    sched.set_timesteps(sigmas=sampling_sigmas(cfg.num_steps).tolist())  # N = 12: pass our sigmas
    x = noise * (1 + sched.sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(sched.timesteps):
        eps = model(sched.scale_model_input(x, t), t.expand(SHAPE[0]), cond.encoder_hidden_states,
                    cond.added_cond_kwargs, z_lq, 1.0)
        x = sched.step(eps, t, x).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=1e-5, atol=1e-5)
    assert len(ours) == cfg.num_steps and x.abs().max() > 0.1


def test_trajectory_equals_diffusers_euler_with_churn():
    """Same generator draws on both sides. diffusers' pipelines evaluate the model before the churn
    noise is added (step() adds it), EDM's Algorithm 2 after: the reference evaluates eps at
    x_hat, peeking the noise from a twin generator, and lets diffusers' step() do the rest."""
    cfg = plain(num_steps=10, s_churn=2.5, s_noise=1.003)
    model, cond = TinyEps(seed=3), text(SHAPE[0], seed=3)
    g = torch.Generator().manual_seed(2)
    noise, z_lq = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    ours = trajectory(cfg, model, noise, cond, z_lq, generator=torch.Generator().manual_seed(7))

    sched = sdxl_euler()
    sched.set_timesteps(cfg.num_steps)
    log_sigmas = np.log(discrete_sigmas().numpy())
    gen, peek = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    gamma = churn_gamma(cfg.s_churn, cfg.num_steps)
    assert gamma == pytest.approx(0.25)
    x = noise * (1 + sched.sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i]
        sigma_hat = sigma * (1 + gamma)
        x_hat = x + torch.randn(SHAPE, generator=peek) * cfg.s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        t_hat = torch.tensor(float(sched._sigma_to_t(np.array(sigma_hat.numpy()), log_sigmas)))
        eps = model(x_hat / (sigma_hat ** 2 + 1) ** 0.5, t_hat.expand(SHAPE[0]), cond.encoder_hidden_states,
                    cond.added_cond_kwargs, z_lq, 1.0)
        x = sched.step(eps, t, x, s_churn=cfg.s_churn, s_noise=cfg.s_noise, generator=gen).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=1e-5, atol=1e-5)


def test_cfg_trajectory_equals_diffusers_with_guided_eps():
    """CFG on denoised predictions equals CFG on eps at the same scale (D = x - sigma * eps)."""
    cfg = SamplerConfig(num_steps=8, s_churn=0.0, tau_r=0.0, cfg_scale=4.0, cfg_scale_start=1.0)
    model, pos, neg = TinyEps(seed=4), text(SHAPE[0], seed=1), text(SHAPE[0], seed=2)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    ours = []
    sample(GuidedDenoiser(model, cfg, pos, neg), noise, sampling_sigmas(8), cfg,
           callback=lambda i, x: ours.append(x.clone()))
    sched = sdxl_euler()
    sched.set_timesteps(8)
    x = noise * (1 + sched.sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t)
        e_pos = model(inp, t.expand(2), pos.encoder_hidden_states, {}, None, 1.0)
        e_neg = model(inp, t.expand(2), neg.encoder_hidden_states, {}, None, 1.0)
        scale = (1.0 - 4.0) * float(sched.sigmas[i]) / SIGMA_MAX + 4.0
        x = sched.step(e_neg + scale * (e_pos - e_neg), t, x).prev_sample
        torch.testing.assert_close(ours[i], x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the terms

def test_restoration_weight_and_guidance():
    assert restoration_weight(SIGMA_MAX, 10.0, 4.0, sigma_max=SIGMA_MAX) == pytest.approx(1.0)
    assert restoration_weight(SIGMA_MAX / 2, 1.0, 2.0, sigma_max=SIGMA_MAX) == pytest.approx(0.25)
    assert restoration_weight(SIGMA_MAX / 2, 0.05, 2.0) == 0.0  # only while sigma_{i+1} > 0.05
    assert restoration_weight(SIGMA_MAX / 2, 0.0, 2.0) == 0.0
    assert restoration_weight(SIGMA_MAX / 2, 1.0, 0.0) == 0.0  # tau_r 0: off
    den, zc = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(restoration_guidance(den, zc, 1.0), zc)
    torch.testing.assert_close(restoration_guidance(den, zc, 0.0), den)
    torch.testing.assert_close(restoration_guidance(den, zc, 0.25), 0.75 * den + 0.25 * zc)


def test_restoration_guidance_in_the_loop_uses_sigma_i_and_stops_at_the_last_step():
    """A denoiser that predicts 0 and z_center = 1: each step's prediction becomes k_t exactly."""
    cfg = SamplerConfig(num_steps=6, s_churn=3.0, s_noise=0.0, tau_r=2.0)  # s_noise 0: churn without noise
    sigmas = sampling_sigmas(6)
    zc = torch.ones(1, 4, 4, 4)
    seen = []
    sample(lambda x, z, sh, s: torch.zeros_like(x), torch.ones(1, 4, 4, 4), sigmas, cfg, z_center=zc,
               callback=lambda i, x: seen.append(x.clone()))
    gamma = churn_gamma(3.0, 6)
    ref = torch.ones(1, 4, 4, 4) * math.sqrt(1 + float(sigmas[0]) ** 2)
    for i in range(6):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        s_hat = s * (1 + gamma)
        k = (s / SIGMA_MAX) ** 2 if s_next > 0.05 else 0.0
        ref = ref + (s_next - s_hat) * (ref - k) / s_hat
        torch.testing.assert_close(seen[i], ref)
    assert float(sigmas[-2]) > 0.05  # the last step is the one without guidance


def test_linear_cfg_schedule():
    cfg = SamplerConfig(cfg_scale=4.0, cfg_scale_start=1.0)
    assert cfg_scale_at(SIGMA_MAX, cfg, SIGMA_MAX) == pytest.approx(1.0)
    assert cfg_scale_at(0.0, cfg, SIGMA_MAX) == pytest.approx(4.0)
    assert cfg_scale_at(SIGMA_MAX / 2, cfg, SIGMA_MAX) == pytest.approx(2.5)
    assert cfg_scale_at(SIGMA_MAX / 2, SamplerConfig(cfg_scale=4.0, linear_cfg=False)) == 4.0
    assert SamplerConfig(cfg_scale=1.0, cfg_scale_start=1.0).uses_cfg is False
    assert SamplerConfig(cfg_scale=1.0, cfg_scale_start=3.0, linear_cfg=False).uses_cfg is False
    assert SamplerConfig().uses_cfg is True


def test_control_scale_schedule():
    const = SamplerConfig(control_scale=0.8)
    assert control_scale_at(SIGMA_MAX, const) == 0.8 and control_scale_at(0.3, const) == 0.8
    lin = SamplerConfig(control_scale=0.9, control_scale_start=0.1, linear_control_scale=True)
    assert control_scale_at(SIGMA_MAX, lin, SIGMA_MAX) == pytest.approx(0.1)
    assert control_scale_at(0.0, lin, SIGMA_MAX) == pytest.approx(0.9)
    assert control_scale_at(SIGMA_MAX / 4, lin, SIGMA_MAX) == pytest.approx(0.9 + (0.1 - 0.9) / 4)


class Recorder:
    """eps = the mean of the prompt's hidden states; records what the model was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq, conditioning_scale):
        self.calls.append((sample.shape[0], timestep.clone(), conditioning_scale,
                           encoder_hidden_states[:, 0, 0].clone(), added_cond_kwargs))
        return encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None].expand_as(sample)


def test_guided_denoiser_batches_both_prompts_and_schedules_scales():
    pos = Conditioning(torch.full((1, 2, 3), 2.0), {"text_embeds": torch.zeros(1, 5)})
    neg = Conditioning(torch.full((1, 2, 3), -1.0), {"text_embeds": torch.ones(1, 5)})
    cfg = SamplerConfig(cfg_scale=4.0, cfg_scale_start=1.0, control_scale=0.5, control_scale_start=0.0,
                        linear_control_scale=True)
    model = Recorder()
    den = GuidedDenoiser(model, cfg, pos, neg)
    x = torch.randn(1, 4, 2, 2)
    sigma, sigma_hat = 7.0, 7.7
    out = den(x, torch.zeros_like(x), sigma_hat, sigma)
    (batch, t, s, first, added), = model.calls
    assert batch == 2 and first.tolist() == [2.0, -1.0]  # positive rows first, one forward
    torch.testing.assert_close(added["text_embeds"], torch.cat([torch.zeros(1, 5), torch.ones(1, 5)]))
    assert s == pytest.approx(0.5 + (0.0 - 0.5) * sigma / SIGMA_MAX)  # control at sigma_i
    assert t[0].item() == pytest.approx(sigma_to_t(sigma_hat, discrete_sigmas()).item())
    scale = (1.0 - 4.0) * sigma_hat / SIGMA_MAX + 4.0  # CFG at sigma_hat
    d_pos, d_neg = x - sigma_hat * 2.0, x - sigma_hat * -1.0
    torch.testing.assert_close(out, d_neg + scale * (d_pos - d_neg))
    # CFG off: only the positive prompt runs
    model.calls.clear()
    out = GuidedDenoiser(model, plain(), pos)(x, None, sigma_hat, sigma)
    assert [c[0] for c in model.calls] == [1]
    torch.testing.assert_close(out, x - sigma_hat * 2.0)
    with pytest.raises(ValueError, match="negative"):
        GuidedDenoiser(model, SamplerConfig(), pos)


def test_same_seed_same_output_and_key_changes_it():
    cfg = SamplerConfig(num_steps=5)
    model, pos, neg = TinyEps(), text(1, 1), text(1, 2)
    noise = lambda key: torch.randn(1, 4, 8, 8, generator=seeded_generator(0, key))
    run = lambda key: sample(GuidedDenoiser(model, cfg, pos, neg), noise(key), sampling_sigmas(5), cfg,
                             z_center=torch.zeros(1, 4, 8, 8), generator=seeded_generator(0, key))
    a, b, c = run("img-a"), run("img-a"), run("img-b")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-2


def test_config_validation():
    with pytest.raises(ConfigError, match="sampler.num_steps"):
        SamplerConfig(num_steps=0)
    with pytest.raises(ConfigError, match="sampler.tau_r"):
        SamplerConfig(tau_r=-1.0)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(SamplerConfig, {"steps": 3})
    assert from_dict(SamplerConfig, {"num_steps": 20, "s_churn": 0}).s_churn == 0.0
