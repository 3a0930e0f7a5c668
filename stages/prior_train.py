"""Stage 0: train a prior where no pretrained one exists (the tiny preset of the demo; DESIGN section 6).

SUPIR freezes SDXL. A preset without SDXL weights needs a prior that can at least decode and
generate, or everything downstream (E_dr's loss through D, the adaptor's noise prediction,
negative samples) learns against random weights. Stage 0 trains, from scratch, in order:

1. the AutoencoderKL as an autoencoder on random HQ crops: MSE + a small KL term (the KL only
   keeps the posterior a distribution; Rombach et al. 2022 use 1e-6), with random rescaling so
   the decoder sees more than one scale; then the latent scaling factor is set from the data
   (1 / std of the latents, as SD did for its VAE), so that scaled latents have unit variance
   and SDXL's sigma schedule fits them (0.13025 is the constant of SDXL's own VAE only);
2. the UNet as a text-conditioned latent diffusion model: epsilon prediction under SDXL's
   discrete schedule (1000 steps, scaled-linear betas) on the frozen VAE's latents, text from
   the frozen (untrained) text encoders, prompt dropout to zeros for classifier-free guidance
   (SDXL's unconditional embedding is zeros: force_zeros_for_empty_prompt). With probability
   ``negative_prob`` a crop is blurred and captioned with the negative-quality prompt, so that
   the prompt SUPIR steers away from means something to a prior that never saw the web.

The text encoders keep their seeded random weights (frozen, like SDXL's): they are fixed feature
maps of the caption. ``train_prior`` saves the result with model/prior.py's ``save_prior``; the
folder is then a ``ModelConfig.prior`` like any SDXL folder. Its config is
stages/prior_train_config.py, its data (crops, held-out crops, augmentations)
stages/prior_train_data.py; the prior as an epsilon model is model/prior.py's ``PriorModel``.
Imports no Ray.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from catalog.config import to_dict
from catalog.tracking import MetricLog
from model.config import ModelConfig
from model.devices import resolve_device
from model.images import psnr, to_pil
from model.prior import PriorModel, build_prior, latent_shape, save_prior
from model.sampler import Conditioning, GuidedDenoiser, SamplerConfig, discrete_sigmas, sample, sampling_sigmas
from stages.prior_train_config import PriorTrainConfig, use_bf16
from stages.prior_train_data import CropSampler, blur_lowres, decode_images, grid_crops, recolor, split_holdout

log = logging.getLogger(__name__)

STAGE0_FILE = "stage0.json"  # metrics and config of the run, beside the diffusers folders


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to 10% of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ---------------------------------------------------------------------------------------------
# 1. the autoencoder

def _start_training(module: torch.nn.Module, lr: float, cfg: PriorTrainConfig
                    ) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, bool]:
    """Unfreeze ``module`` for training: (its parameters, their AdamW, whether to autocast to bf16)."""
    module.requires_grad_(True).train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return params, opt, use_bf16(cfg.mixed_precision, module.device)


def _step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor,
          lr: float, grad_clip: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """D(E(x)) with the posterior mean, in batches: (B, 3, H, W) -> (B, 3, H, W)."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(vae.device, vae.dtype)
        out.append(vae.decode(vae.encode(xb).latent_dist.mean).sample.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def init_posterior_std(vae, std: float = 0.05) -> None:
    """Start the posterior narrow: the log-variance half of quant_conv outputs log(std^2) whatever the input.

    A fresh AutoencoderKL starts with std about 1 around means about 0, so for hundreds of steps
    its decoder sees mostly the sampling noise; with the KL weight at 1e-6 nothing pulls the
    variance down quickly. Starting narrow makes the first steps an autoencoder's."""
    conv = vae.quant_conv
    if conv is None:
        return
    c = conv.out_channels // 2
    conv.weight[c:].zero_()
    conv.bias[c:].fill_(2 * math.log(std))


def train_vae(vae, crops: CropSampler, cfg: PriorTrainConfig, heldout: torch.Tensor,
              metrics: Optional[MetricLog] = None, generator: Optional[torch.Generator] = None) -> dict[str, Any]:
    """Train ``vae`` (AutoencoderKL) in place: MSE + kl_weight * KL on random crops (recoloured
    with probability cfg.recolor).

    Returns losses (first / last 10% means), held-out PSNR before and after, seconds."""
    metrics = metrics or MetricLog()
    device = vae.device
    if cfg.vae_steps > 0:
        init_posterior_std(vae)
    psnr_init = float(psnr(reconstruct(vae, heldout), heldout).mean())
    params, opt, amp = _start_training(vae, cfg.vae_lr, cfg)
    losses: list[float] = []
    t0 = time.time()
    for step in tqdm(range(cfg.vae_steps), desc="stage 0: VAE",
                     disable=not cfg.progress or bool(os.environ.get("TQDM_DISABLE"))):  # off in logs
        x, _ = crops(cfg.batch_size)
        if cfg.recolor > 0:
            x = recolor(x, cfg.recolor, generator)
        x = x.to(device)  # (B, 3, S, S)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            posterior = vae.encode(x).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            z = posterior.mean.float() + posterior.std.float() * noise
            recon = vae.decode(z).sample
        mse = F.mse_loss(recon.float(), x)
        # KL summed over the latent, per image pixel: the balance of Rombach et al.'s summed losses
        kl = posterior.kl().float().mean() / x[0].numel()
        loss = mse + cfg.kl_weight * kl
        lr = lr_at(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup_steps)
        _step(opt, params, loss, lr, cfg.grad_clip)
        losses.append(mse.item())
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            metrics.log({"vae/mse": mse.item(), "vae/kl": kl.item(), "vae/lr": lr,
                         "vae/psnr_train": float(10 * math.log10(4.0 / max(mse.item(), 1e-10)))}, step)
    seconds = time.time() - t0
    vae.requires_grad_(False).eval()
    scores = psnr(reconstruct(vae, heldout), heldout)  # (n,)
    out = {"psnr_heldout_init": psnr_init, "psnr_heldout": float(scores.mean()),
           "psnr_heldout_min": float(scores.min()), "seconds": seconds, "steps": cfg.vae_steps,
           **_curve(losses, "mse")}
    metrics.log({"vae/psnr_heldout": out["psnr_heldout"]}, cfg.vae_steps)
    return out


def _curve(losses: list[float], name: str) -> dict[str, float]:
    """Mean of the first and last 10% of a loss curve."""
    if not losses:
        return {}
    k = max(1, len(losses) // 10)
    return {f"{name}_first": float(np.mean(losses[:k])), f"{name}_last": float(np.mean(losses[-k:]))}


@torch.no_grad()
def latent_scaling_factor(vae, x: torch.Tensor) -> float:
    """1 / std of the VAE's latent means over ``x`` (Rombach et al. 2022's rescaling), 5 significant digits."""
    z = torch.cat([vae.encode(x[i : i + 16].to(vae.device)).latent_dist.mean.float().cpu() for i in range(0, len(x), 16)])
    return float(f"{1.0 / float(z.std()):.5g}")


# ---------------------------------------------------------------------------------------------
# 2. the latent diffusion UNet

@torch.no_grad()
def diffusion_batch(model: PriorModel, x: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
                    alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noisy latents x_t = sqrt(a_t) z + sqrt(1 - a_t) eps of images ``x`` (DDPM forward process)."""
    z = model.encode(x)  # (B, 4, S/f, S/f), scaled
    a = alphas_cumprod.to(z.device)[timesteps][:, None, None, None]
    return a.sqrt() * z + (1 - a).sqrt() * noise


def eps_loss(model: PriorModel, x: torch.Tensor, cond: Conditioning, timesteps: torch.Tensor, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Epsilon-prediction MSE of the UNet on images ``x`` at ``timesteps`` with ``noise``."""
    x_t = diffusion_batch(model, x, timesteps, noise, alphas_cumprod)
    eps = model.unet(x_t, timesteps, encoder_hidden_states=cond.encoder_hidden_states,
                     added_cond_kwargs=cond.added_cond_kwargs).sample
    return F.mse_loss(eps.float(), noise)


class TextCache:
    """Conditioning rows per prompt, encoded once with the frozen text encoders."""

    def __init__(self, model: PriorModel, height: int, width: int):
        self.model, self.h, self.w = model, height, width
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, prompts: Sequence[str], zero: Sequence[bool]) -> Conditioning:
        new = sorted({p for p in prompts if p not in self.cache})
        if new:
            hidden, pooled = self.model.encode_prompt(new)
            self.cache.update({p: (hidden[i], pooled[i]) for i, p in enumerate(new)})
        keep = torch.tensor([0.0 if z else 1.0 for z in zero], device=self.model.unet.device)
        hidden = torch.stack([self.cache[p][0] for p in prompts]) * keep[:, None, None]
        pooled = torch.stack([self.cache[p][1] for p in prompts]) * keep[:, None]
        return Conditioning(hidden, self.model.added_cond_kwargs(pooled, self.h, self.w))


def train_unet(model: PriorModel, crops: CropSampler, captions: Sequence[str], cfg: PriorTrainConfig,
               heldout: torch.Tensor, metrics: Optional[MetricLog] = None,
               generator: Optional[torch.Generator] = None) -> dict[str, Any]:
    """Train ``model.unet`` in place as a text-conditioned epsilon-prediction LDM; the VAE and text
    encoders stay frozen. ``captions[i]`` is the text of ``crops.images[i]``.

    Returns the train loss curve (first / last 10%), the held-out eval loss (fixed noise and
    timesteps) before and after, and seconds."""
    metrics = metrics or MetricLog()
    g = generator or torch.Generator().manual_seed(cfg.seed)
    unet = model.unet
    device = unet.device
    alphas_cumprod = 1.0 / (1.0 + discrete_sigmas() ** 2)  # sigma^2 = (1 - a) / a
    s = cfg.crop_size
    text = TextCache(model, s, s)

    # held-out eval: fixed timesteps spread over the schedule, fixed noise, empty prompt
    ge = torch.Generator().manual_seed(cfg.seed + 1)
    n, e = len(heldout), heldout.shape[-1]
    t_eval = torch.linspace(0, 999, n).round().long()
    noise_eval = torch.randn(latent_shape(model.vae, n, e), generator=ge)
    cond_eval = TextCache(model, e, e)([""] * n, [False] * n)

    def eval_loss() -> float:
        unet.eval()
        with torch.no_grad():
            return float(eps_loss(model, heldout.to(device), cond_eval, t_eval.to(device), noise_eval.to(device),
                                  alphas_cumprod))

    loss_init = eval_loss()
    params, opt, amp = _start_training(unet, cfg.unet_lr, cfg)
    losses: list[float] = []
    t0 = time.time()
    for step in tqdm(range(cfg.unet_steps), desc="stage 0: UNet",
                     disable=not cfg.progress or bool(os.environ.get("TQDM_DISABLE"))):  # off in logs
        x, idx = crops(cfg.batch_size)
        b = len(idx)
        u = torch.rand((2, b), generator=g)
        negative = (u[0] < cfg.negative_prob).tolist()
        zero = (u[1] < cfg.prompt_dropout).tolist()
        if any(negative):
            m = torch.tensor(negative)
            x[m] = blur_lowres(x[m])
        prompts = [cfg.negative_prompt if neg else captions[i] for i, neg in zip(idx, negative)]
        cond = text(prompts, zero)
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=g)
        noise = torch.randn(latent_shape(model.vae, b, s), generator=g)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = eps_loss(model, x.to(device), cond, t.to(device), noise.to(device), alphas_cumprod)
        lr = lr_at(step, cfg.unet_steps, cfg.unet_lr, cfg.warmup_steps)
        _step(opt, params, loss, lr, cfg.grad_clip)
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            metrics.log({"unet/loss": loss.item(), "unet/lr": lr}, step)
    seconds = time.time() - t0
    unet.requires_grad_(False).eval()
    out = {"eval_loss_init": loss_init, "eval_loss": eval_loss(), "seconds": seconds, "steps": cfg.unet_steps,
           **_curve(losses, "loss")}
    metrics.log({"unet/eval_loss": out["eval_loss"], "unet/eval_loss_init": loss_init}, cfg.unet_steps)
    return out


@torch.no_grad()
def generate(model: PriorModel, prompts: Sequence[str], size: int, steps: int, seed: int = 0,
             cfg_scale: float = 1.0) -> torch.Tensor:
    """Text-to-image with the prior and model/sampler.py's Euler sampler (no churn): (B, 3, size, size)."""
    n = len(prompts)
    scfg = SamplerConfig(num_steps=steps, s_churn=0.0, cfg_scale=cfg_scale, linear_cfg=False, tau_r=0.0)
    pos = model.conditioning(prompts, size, size)
    neg = model.conditioning([""] * n, size, size, zero=[True] * n) if scfg.uses_cfg else None
    denoiser = GuidedDenoiser(model, scfg, pos, neg)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latent_shape(model.vae, n, size), generator=g).to(model.unet.device)
    z = sample(denoiser, noise, sampling_sigmas(steps).to(model.unet.device), scfg, generator=g)
    return model.decode(z).float().clamp(-1, 1).cpu()


def total_variation(x: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels of images in [-1, 1] (a texture statistic)."""
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()) / 2


# ---------------------------------------------------------------------------------------------
# the whole of stage 0

def train_prior(cfg: PriorTrainConfig, model_cfg: ModelConfig, images: Sequence[bytes | np.ndarray],
                captions: Optional[Sequence[Optional[str]]], out_dir: str | Path, log_run: Any = None) -> Path:
    """Train the preset's prior (VAE, then UNet) on ``images`` and save it as a diffusers folder at ``out_dir``.

    ``captions[i]`` is the caption of ``images[i]`` (None or missing: empty). ``log_run`` is a
    catalog.tracking.RunRef (or None): loss curves, held-out PSNR, a reconstruction grid and a
    sample grid. Written to a temporary folder and renamed, so ``out_dir`` is complete or absent.
    Returns ``out_dir``; its ``stage0.json`` holds the measured numbers."""
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_prior(cfg, model_cfg, images, captions, out_dir, log_run, device)
    finally:
        torch.set_num_threads(threads)


def _train_prior(cfg, model_cfg, images, captions, out_dir, log_run, device) -> Path:
    t0 = time.time()
    decoded_all = decode_images(images)
    texts_all = [(c or "").strip() if cfg.captions == "captions" and captions is not None else ""
                 for c in (captions if captions is not None else [None] * len(decoded_all))]
    keep = [i for i, d in enumerate(decoded_all) if d is not None]
    if not keep:
        raise ValueError("stage 0 needs images: none of the given images decodes")
    decoded, texts = [decoded_all[i] for i in keep], [texts_all[i] for i in keep]
    train_idx, held_idx = split_holdout(len(decoded), cfg.holdout_images)
    held = [decoded[i] for i in held_idx] or [decoded[i] for i in train_idx]  # one image: eval on it
    heldout = grid_crops(held, cfg.eval_crop_size or cfg.crop_size, cfg.eval_crops)  # (n, 3, E, E)
    g = torch.Generator().manual_seed(cfg.seed)
    crops = CropSampler([decoded[i] for i in train_idx], cfg.crop_size, cfg.min_scale, g)
    crop_texts = [texts[i] for i in train_idx if min(decoded[i].shape[:2]) >= cfg.crop_size]
    metrics = MetricLog(log_run)

    prior = build_prior(model_cfg.preset, device=device, seed=model_cfg.seed)
    model = PriorModel(prior)
    vae_out = train_vae(prior.vae, crops, cfg, heldout, metrics, g)
    # scaled latents of unit variance, so SDXL's sigma schedule fits the new VAE
    sample_crops, _ = crops(max(64, cfg.batch_size))
    prior.vae.register_to_config(scaling_factor=latent_scaling_factor(prior.vae, sample_crops))
    unet_out = train_unet(model, crops, crop_texts, cfg, heldout, metrics, g)
    prior.freeze()

    result: dict[str, Any] = {"vae": vae_out, "unet": unet_out,
                              "scaling_factor": float(prior.vae.config.scaling_factor),
                              "images": {"train": len(train_idx), "heldout": len(held_idx),
                                         "undecodable": len(decoded_all) - len(decoded)},
                              "config": to_dict(cfg), "model": {"preset": model_cfg.preset, "seed": model_cfg.seed}}
    grids = _grids(model, heldout, crop_texts, cfg, result)
    result["seconds"] = time.time() - t0

    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    save_prior(prior, tmp)
    (tmp / STAGE0_FILE).write_text(json.dumps(result, indent=2, sort_keys=True))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)

    metrics.log({"psnr_heldout": vae_out["psnr_heldout"], "scaling_factor": result["scaling_factor"],
                 "unet_eval_loss": unet_out["eval_loss"], "seconds_total": result["seconds"],
                 **{f"samples/{k}": v for k, v in result.get("samples", {}).items()}}, 0)
    metrics.flush()
    if metrics.run is not None:
        for name, img in grids.items():
            log_run.log_image(img, name)
        log_run.log_dict(result, STAGE0_FILE)
    log.info("stage 0: prior saved to %s (held-out PSNR %.2f dB, UNet eval loss %.3f -> %.3f, %.0f s)", out_dir,
             vae_out["psnr_heldout"], unet_out["eval_loss_init"], unet_out["eval_loss"], result["seconds"])
    return out_dir


def _grids(model: PriorModel, heldout: torch.Tensor, texts: Sequence[str], cfg: PriorTrainConfig,
           result: dict[str, Any]) -> dict[str, Image.Image]:
    """Reconstruction grid (HQ | D(E(HQ))) and a sample grid; sample statistics into ``result``."""
    from evaluation.grids import make_grid

    grids = {}
    k = min(8, len(heldout))
    recon = reconstruct(model.vae, heldout[:k])
    grids["stage0_vae_reconstructions.png"] = make_grid([[to_pil(heldout[i]), to_pil(recon[i])] for i in range(k)],
                                                        ["held-out HQ", "D(E(HQ))"], cell=128)
    if cfg.sample_num_steps > 0:
        prompts = [texts[i % len(texts)] if texts else "" for i in range(k)]
        samples = generate(model, prompts, cfg.crop_size, cfg.sample_num_steps, seed=cfg.seed)
        negatives = generate(model, [cfg.negative_prompt] * k, cfg.crop_size, cfg.sample_num_steps, seed=cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed + 2)
        z_noise = torch.randn(latent_shape(model.vae, k, cfg.crop_size), generator=g)
        noise = model.decode(z_noise.to(model.unet.device)).float().clamp(-1, 1).cpu()
        # texture statistic: samples of a working prior look like held-out crops, not like decoded noise
        result["samples"] = {"tv_heldout": total_variation(heldout), "tv_samples": total_variation(samples),
                             "tv_negative_prompt": total_variation(negatives), "tv_decoded_noise": total_variation(noise)}
        grids["stage0_samples.png"] = make_grid(
            [[to_pil(samples[i]), to_pil(negatives[i]), to_pil(noise[i])] for i in range(k)],
            ["caption", "negative prompt", "decoded N(0, I)"], cell=128)
    return grids


def read_stage0(folder: str | Path) -> Optional[dict[str, Any]]:
    """The stage0.json of a trained prior folder (None for a prior that stage 0 did not make)."""
    p = Path(folder) / STAGE0_FILE
    return json.loads(p.read_text()) if p.is_file() else None
