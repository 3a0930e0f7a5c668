"""SUPIR's restoration-guided EDM Euler sampler (paper section 3.3; DESIGN section 7).

An Euler sampler in sigma space over SDXL's discrete schedule, with EDM's churn (Karras et al.
2022, Algorithm 2), classifier-free guidance with a positive and a negative prompt, a CFG scale
and a control scale that may move linearly with sigma, and SUPIR's restoration guidance that
pulls every prediction toward z_center = E(x_stage1) while sigma is large.

Each equation is one small function below, with the equation in its docstring. The loop is
written out once in :func:`sample` (and reused by model/tiling.py, whose tiled denoiser drops in
for :class:`GuidedDenoiser`); a caller that needs something else composes the functions itself::

    sigmas = sampling_sigmas(cfg.num_steps)                       # (N + 1,), last 0
    denoiser = GuidedDenoiser(model, cfg, positive, negative)     # D(x, sigma) with CFG
    x = sample(denoiser, noise, sigmas, cfg, z_lq=z_lq, z_center=z_center, generator=g)

The denoiser only needs an epsilon model with the SUPIR forward signature
``eps = model(sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq,
conditioning_scale)``, so anything with that call (a tiny conv net in tests) can drive it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from catalog.config import check

# SDXL's training schedule (DESIGN section 6): 1000 steps, scaled-linear betas 0.00085..0.012.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
SIGMA_MAX = 14.6146  # sigma of t = 999 in that schedule (printed to 4 decimals; see discrete_sigmas)

# SUPIR's default prompts (official test script; DESIGN section 7).
DEFAULT_POSITIVE_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
    "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
    "detailing, hyper sharpness, perfect without deformations."
)
DEFAULT_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg "
    "artifacts, deformed, lowres, over-smooth"
)
# SUPIR's negative-quality prompt (paper section 3.2): the caption of its negative-quality training
# samples, so that classifier-free guidance learns what the negative prompt steers away from
NEGATIVE_QUALITY_PROMPT = ("oil painting, cartoon, blurring, dirty, messy, low quality, frames, deformed, lowres, "
                           "over-smooth")


PRESETS = ("paper", "released")
# The settings that differ between the paper's sampler (DESIGN section 7) and the released
# inference script (test.py of Fanghua-Yu/SUPIR; ../shared/supir/README.md). A field left null
# takes its preset's value; a value given explicitly wins.
PRESET_VALUES: dict[str, dict[str, Any]] = {
    "paper": {"sigma_snap": False, "s_noise": 1.003, "tau_r": 4.0, "size_conditioning": 0, "prompt_separator": ", "},
    "released": {"sigma_snap": True, "s_noise": 1.01, "tau_r": 0.0, "size_conditioning": 1024, "prompt_separator": ""},
}


@dataclass
class SamplerConfig:
    """The restoration-guided sampler's knobs; defaults are SUPIR's (DESIGN section 7)."""

    preset: Literal["paper", "released"] = "paper"
    """Where the null fields below take their values: ``paper`` (DESIGN section 7: continuous
    sigma, restoration guidance tau_r 4, s_noise 1.003, size conditioning from the image) or
    ``released`` (the released inference script, what the SUPIR-v0Q/v0F weights expect: sigma
    snapped to the training sigmas, restoration guidance off, s_noise 1.01, size conditioning
    fixed at 1024). pipelines/restore.py ``restore.sampler.preset=released``; configs/sdxl.yaml: released."""

    sigma_snap: Optional[bool] = None
    """Snap sigma to the nearest of the 1000 training sigmas inside the denoiser (sgm's
    DiscreteDenoiser): c_in, c_out and the timestep (then an integer index) follow the snapped
    value, so a churned step 0 (sigma_hat 16.08) runs at 14.6146. false: continuous sigma and a
    log-interpolated timestep. null: the preset's (released true, paper false)."""

    size_conditioning: Optional[int] = None
    """SDXL size micro-conditioning: 0 uses the image's own size (original = target = H x W);
    N > 0 fixes original and target size at N x N with crop (0, 0), as the released script
    does with 1024. null: the preset's (released 1024, paper 0)."""

    prompt_separator: Optional[str] = None
    """Joins the row's caption and ``positive_prompt``: ``"<caption><sep><positive_prompt>"``.
    The released script concatenates them with nothing between (""); paper ", ". null: the preset's."""

    num_steps: int = 50
    """N, the number of Euler steps (N + 1 sigmas, the last 0)."""

    s_churn: float = 5.0
    """EDM churn: each step first raises sigma by gamma = min(s_churn / N, sqrt(2) - 1)."""

    s_noise: Optional[float] = None
    """EDM's noise inflation: the churn noise is multiplied by it. null: the preset's (paper
    1.003, released 1.01)."""

    cfg_scale: float = 4.0
    """Classifier-free guidance scale at sigma = 0 (and everywhere when ``linear_cfg`` is false).
    1 with ``cfg_scale_start`` 1 (or ``linear_cfg`` false) turns CFG off: the negative prompt is
    not evaluated at all."""

    cfg_scale_start: float = 1.0
    """CFG scale at sigma = sigma_max when ``linear_cfg`` is on."""

    linear_cfg: bool = True
    """Linear CFG: scale(sigma) = (cfg_scale_start - cfg_scale) * sigma / sigma_max + cfg_scale."""

    control_scale: float = 1.0
    """Control scale s of the ZeroSFT connectors at sigma = 0 (everywhere when not linear)."""

    control_scale_start: float = 0.0
    """Control scale at sigma = sigma_max when ``linear_control_scale`` is on."""

    linear_control_scale: bool = False
    """Control scale linear in sigma: s(sigma) = (sigma / sigma_max) * (start - s) + s."""

    tau_r: Optional[float] = None
    """Restoration guidance exponent tau_r (the paper's k_t = (sigma_t / sigma_max) ** tau_r);
    0 turns restoration guidance off. null: the preset's: paper 4.0 (the released yaml's
    ``restore_cfg``), released 0 (its script passes s_stage1 = -1: guidance off unless asked)."""

    guidance_sigma_min: float = 0.05
    """Restoration guidance is applied only while the next sigma is above this."""

    positive_prompt: str = DEFAULT_POSITIVE_PROMPT
    """Appended to each image's caption (``"<caption>, <positive_prompt>"``) for the positive branch."""

    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """The negative-quality prompt of the negative CFG branch (paper section 3.2)."""

    seed: int = 0
    """Run seed; each image's noise comes from a torch.Generator seeded by (seed, image key)."""

    def __post_init__(self) -> None:
        check(self.preset in PRESETS, "sampler.preset", self.preset, "one of " + ", ".join(PRESETS))
        for name, value in PRESET_VALUES[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check(isinstance(self.size_conditioning, int) and self.size_conditioning >= 0, "sampler.size_conditioning",
              self.size_conditioning, "0 (the image's size) or a size in pixels")
        check(isinstance(self.num_steps, int) and 1 <= self.num_steps <= NUM_TRAIN_TIMESTEPS,
              "sampler.num_steps", self.num_steps, f"an integer in [1, {NUM_TRAIN_TIMESTEPS}]")
        check(self.s_churn >= 0, "sampler.s_churn", self.s_churn, "a number >= 0")
        check(self.s_noise >= 0, "sampler.s_noise", self.s_noise, "a number >= 0")
        check(self.cfg_scale >= 0, "sampler.cfg_scale", self.cfg_scale, "a number >= 0")
        check(self.cfg_scale_start >= 0, "sampler.cfg_scale_start", self.cfg_scale_start, "a number >= 0")
        check(0 <= self.control_scale <= 10, "sampler.control_scale", self.control_scale, "a number in [0, 10]")
        check(0 <= self.control_scale_start <= 10, "sampler.control_scale_start", self.control_scale_start,
              "a number in [0, 10]")
        check(self.tau_r >= 0, "sampler.tau_r", self.tau_r, "a number >= 0 (0: no restoration guidance)")
        check(self.guidance_sigma_min >= 0, "sampler.guidance_sigma_min", self.guidance_sigma_min, "a number >= 0")
        check(isinstance(self.seed, int) and self.seed >= 0, "sampler.seed", self.seed, "an integer >= 0")

    @property
    def uses_cfg(self) -> bool:
        """False when every step's CFG scale is exactly 1 (then only the positive branch runs)."""
        start = self.cfg_scale_start if self.linear_cfg else self.cfg_scale
        return not (self.cfg_scale == 1.0 and start == 1.0)


# ---------------------------------------------------------------------------------------------
# the schedule

def discrete_sigmas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                    beta_end: float = BETA_END) -> torch.Tensor:
    """SDXL's training sigmas, ascending in t, float32 (as diffusers computes them).

        beta_t = (sqrt(beta_start) + t / (T - 1) * (sqrt(beta_end) - sqrt(beta_start)))^2
        alpha_bar_t = prod_{s <= t} (1 - beta_s)
        sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)          sigma_999 = 14.6146
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # (T,)


def step_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The N integer training timesteps a sampler visits, descending from T - 1.

        t_i = floor((T - 1) - i * (T - 1) / N),  i = 0 .. N-1      (sgm's "roughly equally spaced")

    This is diffusers' ``timestep_spacing="trailing"`` with floor for round: equal for N = 50 and
    every N that divides 1000, at most one training step apart otherwise (checked in tests).
    """
    return np.floor(np.linspace(num_train_timesteps - 1, 0, num_steps, endpoint=False)).astype(np.int64)


def sampling_sigmas(num_steps: int, train_sigmas: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sigma_0 > ... > sigma_{N-1} > sigma_N = 0: the training sigmas at :func:`step_timesteps`, then 0."""
    train_sigmas = discrete_sigmas() if train_sigmas is None else train_sigmas
    t = torch.from_numpy(step_timesteps(num_steps, len(train_sigmas)))
    return torch.cat([train_sigmas[t], train_sigmas.new_zeros(1)])  # (N + 1,)


def sigma_to_t(sigma: torch.Tensor | float, train_sigmas: torch.Tensor) -> torch.Tensor:
    """The continuous training timestep of a sigma, by linear interpolation in log sigma.

        log sigma_k <= log sigma < log sigma_{k+1}:
        t = k + (log sigma - log sigma_k) / (log sigma_{k+1} - log sigma_k),   clipped to [0, T-1]

    (k-diffusion's DiscreteSchedule.sigma_to_t, diffusers' EulerDiscreteScheduler._sigma_to_t.)
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    log_sigmas = train_sigmas.log().to(sigma.device)  # (T,)
    log_sigma = sigma.clamp(min=1e-10).log().reshape(-1)  # (M,)
    low = (log_sigma[None, :] >= log_sigmas[:, None]).cumsum(0).argmax(0).clamp(max=len(log_sigmas) - 2)  # (M,)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def snap_sigma(sigma: float, train_sigmas: torch.Tensor) -> tuple[float, int]:
    """The nearest training sigma and its index (sgm's DiscreteDenoiser, the released sampler):

        t = argmin_k |sigma - sigma_k|,   sigma' = sigma_t

    Above sigma_max (a churned step 0: 14.6146 * 1.1 = 16.08) that is sigma_max itself, t = 999."""
    t = int((train_sigmas - float(sigma)).abs().argmin())
    return float(train_sigmas[t]), t


def join_prompt(caption: Optional[str], prompt: str, separator: str) -> str:
    """The positive prompt of one image: ``caption + separator + prompt`` (just ``prompt`` without
    a caption). The released script joins with "" (``''.join([caption, a_prompt])``)."""
    if not caption or not caption.strip():
        return prompt
    return f"{caption.strip()}{separator}{prompt}"


# ---------------------------------------------------------------------------------------------
# one step, equation by equation

def churn_gamma(s_churn: float, num_steps: int) -> float:
    """EDM's churn factor: gamma = min(s_churn / N, sqrt(2) - 1)."""
    return min(s_churn / num_steps, math.sqrt(2.0) - 1.0)


def sigma_hat_of(sigma: float, gamma: float) -> float:
    """The raised noise level of a churned step: sigma_hat = sigma_i * (1 + gamma)."""
    return sigma * (1.0 + gamma)


def add_churn_noise(x: torch.Tensor, sigma: float, sigma_hat: float, noise: torch.Tensor,
                    s_noise: float) -> torch.Tensor:
    """x_hat = x + sqrt(sigma_hat^2 - sigma^2) * s_noise * noise,   noise ~ N(0, I)."""
    return x + (sigma_hat ** 2 - sigma ** 2) ** 0.5 * s_noise * noise


def scale_model_input(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The epsilon model's input: c_in(sigma) x = x / sqrt(sigma^2 + 1) (variance-preserving latents)."""
    return x / (sigma ** 2 + 1.0) ** 0.5


def eps_to_denoised(x: torch.Tensor, sigma: float, eps: torch.Tensor) -> torch.Tensor:
    """The epsilon denoiser: D(x, sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma))."""
    return x - sigma * eps


def linear_in_sigma(sigma: float, value: float, value_start: float, sigma_max: float = SIGMA_MAX) -> float:
    """A knob that moves linearly from ``value_start`` at sigma_max to ``value`` at sigma = 0:

        v(sigma) = (value_start - value) * sigma / sigma_max + value
    """
    return (value_start - value) * sigma / sigma_max + value


def cfg_scale_at(sigma: float, cfg: SamplerConfig, sigma_max: float = SIGMA_MAX) -> float:
    """Linear CFG: scale(sigma) = (cfg_start - cfg) * sigma / sigma_max + cfg; constant cfg when off."""
    if not cfg.linear_cfg:
        return cfg.cfg_scale
    return linear_in_sigma(sigma, cfg.cfg_scale, cfg.cfg_scale_start, sigma_max)


def control_scale_at(sigma: float, cfg: SamplerConfig, sigma_max: float = SIGMA_MAX) -> float:
    """Control scale: s(sigma) = (sigma / sigma_max) * (s_start - s) + s when linear, else s."""
    if not cfg.linear_control_scale:
        return cfg.control_scale
    return linear_in_sigma(sigma, cfg.control_scale, cfg.control_scale_start, sigma_max)


def classifier_free_guidance(den_pos: torch.Tensor, den_neg: torch.Tensor, scale: float) -> torch.Tensor:
    """CFG on denoised predictions: D = D_neg + scale * (D_pos - D_neg)."""
    return den_neg + scale * (den_pos - den_neg)


def restoration_weight(sigma: float, sigma_next: float, tau_r: float, sigma_min: float = 0.05,
                       sigma_max: float = SIGMA_MAX) -> float:
    """SUPIR's k_t: (sigma_i / sigma_max) ** tau_r while sigma_{i+1} > sigma_min and tau_r > 0, else 0.

    It uses the step's nominal sigma_i, not the churned sigma_hat (as the released sampler does).
    """
    if tau_r <= 0 or sigma_next <= sigma_min:
        return 0.0
    return (sigma / sigma_max) ** tau_r


def restoration_guidance(den: torch.Tensor, z_center: torch.Tensor, weight: float) -> torch.Tensor:
    """Pull the prediction toward the LQ latent: D' = D - (D - z_center) * k_t (paper eq. 5)."""
    return den - (den - z_center) * weight


def euler_step(x_hat: torch.Tensor, den: torch.Tensor, sigma_hat: float, sigma_next: float) -> torch.Tensor:
    """Euler on the probability-flow ODE: x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) * (x_hat - D) / sigma_hat."""
    derivative = (x_hat - den) / sigma_hat  # dx/dsigma
    return x_hat + derivative * (sigma_next - sigma_hat)


# ---------------------------------------------------------------------------------------------
# the denoiser

@dataclass
class Conditioning:
    """One prompt's SDXL conditioning: token states, and the pooled text + time ids."""

    encoder_hidden_states: torch.Tensor  # (B, 77, cross_attention_dim)
    added_cond_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)  # text_embeds (B, P), time_ids (B, 6)

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Both prompts in one batch: self's rows first."""
        return Conditioning(torch.cat([self.encoder_hidden_states, other.encoder_hidden_states]),
                            {k: torch.cat([v, other.added_cond_kwargs[k]]) for k, v in self.added_cond_kwargs.items()})

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(self.encoder_hidden_states.to(device=device, dtype=dtype),
                            {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                             for k, v in self.added_cond_kwargs.items()})


class EpsModel(Protocol):
    """The SUPIR model's forward: predicted noise for scaled latents at a (continuous) timestep."""

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict[str, torch.Tensor], z_lq: Optional[torch.Tensor],
                 conditioning_scale: float) -> torch.Tensor: ...


class Denoiser(Protocol):
    """D(x, sigma) for one step, as :func:`sample` calls it (GuidedDenoiser or a tiled wrapper)."""

    def __call__(self, x: torch.Tensor, z_lq: Optional[torch.Tensor], sigma_hat: float,
                 sigma: float) -> torch.Tensor: ...


class GuidedDenoiser:
    """D(x, sigma_hat) of an epsilon model with CFG and the control-scale schedule.

    The CFG scale is evaluated at sigma_hat (the level the model sees), the control scale at the
    step's nominal sigma_i. With CFG on, both prompts run as one batch of 2B.
    """

    def __init__(self, model: EpsModel, cfg: SamplerConfig, positive: Conditioning,
                 negative: Optional[Conditioning] = None, train_sigmas: Optional[torch.Tensor] = None,
                 dtype: Optional[torch.dtype] = None):
        self.model = model
        self.cfg = cfg
        self.train_sigmas = discrete_sigmas() if train_sigmas is None else train_sigmas
        self.sigma_max = float(self.train_sigmas[-1])
        self.dtype = dtype  # the model's input dtype (None: keep the sampler's float32)
        self.use_cfg = cfg.uses_cfg
        if self.use_cfg and negative is None:
            raise ValueError("CFG is on (cfg_scale or cfg_scale_start != 1) but no negative conditioning was given")
        self.positive = positive
        self.both = positive.cat(negative) if self.use_cfg else positive

    def eps(self, x: torch.Tensor, z_lq: Optional[torch.Tensor], sigma: float, cond: Conditioning,
            control_scale: float, timestep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """eps(x / sqrt(sigma^2 + 1), t(sigma)) in float32 (``timestep``: t given, e.g. an integer index)."""
        dtype = self.dtype or x.dtype
        t = sigma_to_t(sigma, self.train_sigmas) if timestep is None else timestep
        t = t.to(x.device).expand(x.shape[0])  # (B,)
        cond = cond.to(x.device, dtype)
        out = self.model(scale_model_input(x, sigma).to(dtype), t, cond.encoder_hidden_states,
                         cond.added_cond_kwargs, None if z_lq is None else z_lq.to(dtype), control_scale)
        return out.float()

    def denoise(self, x: torch.Tensor, z_lq: Optional[torch.Tensor], sigma: float, cond: Conditioning,
                control_scale: float) -> torch.Tensor:
        """D(x, sigma) = x - sigma' * eps(x / sqrt(sigma'^2 + 1), t'), with sigma' = sigma and t' = t(sigma),
        or with ``sigma_snap`` the nearest training sigma and its integer index (:func:`snap_sigma`)."""
        if not self.cfg.sigma_snap:
            return eps_to_denoised(x, sigma, self.eps(x, z_lq, sigma, cond, control_scale))
        sigma_q, t = snap_sigma(sigma, self.train_sigmas)
        eps = self.eps(x, z_lq, sigma_q, cond, control_scale, torch.tensor(t, dtype=torch.int64))
        return eps_to_denoised(x, sigma_q, eps)

    def __call__(self, x: torch.Tensor, z_lq: Optional[torch.Tensor], sigma_hat: float, sigma: float) -> torch.Tensor:
        s = control_scale_at(sigma, self.cfg, self.sigma_max)
        if not self.use_cfg:
            return self.denoise(x, z_lq, sigma_hat, self.positive, s)
        x2 = torch.cat([x, x])  # (2B, C, h, w): positive rows first
        z2 = None if z_lq is None else torch.cat([z_lq, z_lq])
        den_pos, den_neg = self.denoise(x2, z2, sigma_hat, self.both, s).chunk(2)
        return classifier_free_guidance(den_pos, den_neg, cfg_scale_at(sigma_hat, self.cfg, self.sigma_max))


# ---------------------------------------------------------------------------------------------
# the loop

def initial_latents(noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(1 + sigma_0^2) * noise  (the variance of a variance-preserving latent at sigma_0)."""
    return noise * (1.0 + float(sigmas[0]) ** 2) ** 0.5


def sample(denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cfg: SamplerConfig,
           z_lq: Optional[torch.Tensor] = None, z_center: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None, progress: bool = False,
           callback: Optional[Callable[[int, torch.Tensor], Any]] = None,
           sigma_max: Optional[float] = None) -> torch.Tensor:
    """Run the restoration-guided Euler sampler from ``noise`` ~ N(0, I), (B, 4, h, w); returns x at sigma_N = 0.

    Per step i (DESIGN section 7): gamma and sigma_hat, churn noise drawn from ``generator`` for
    the whole latent (torch.randn on the generator's device, then moved), the denoiser at
    sigma_hat, restoration guidance toward ``z_center`` with k_t, and the Euler step.
    ``callback(i, x)`` sees x after each step. ``sigma_max`` (of k_t) defaults to SDXL's sigma_999.
    """
    n = len(sigmas) - 1
    sigma_max = float(discrete_sigmas()[-1]) if sigma_max is None else sigma_max
    gamma = churn_gamma(cfg.s_churn, n)
    x = initial_latents(noise.float(), sigmas)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    for i in tqdm(range(n), desc="sampling", leave=False,
                  disable=not progress or bool(os.environ.get("TQDM_DISABLE"))):  # off in logs
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma_hat = sigma_hat_of(sigma, gamma)
        if gamma > 0:
            eps_noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
            x = add_churn_noise(x, sigma, sigma_hat, eps_noise.to(x.device), cfg.s_noise)
        den = denoiser(x, z_lq, sigma_hat, sigma)
        if z_center is not None:
            k = restoration_weight(sigma, sigma_next, cfg.tau_r, cfg.guidance_sigma_min, sigma_max)
            if k > 0:
                den = restoration_guidance(den, z_center.float(), k)
        x = euler_step(x, den, sigma_hat, sigma_next)
        if callback is not None:
            callback(i, x)
    return x


def seeded_generator(seed: int, key: str = "") -> torch.Generator:
    """A CPU generator seeded by (run seed, content key), so an image's noise does not depend on its
    batch or on the device (noise is drawn on the CPU and moved)."""
    from catalog.seeds import generator

    return generator(seed, key)
