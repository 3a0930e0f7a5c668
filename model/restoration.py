"""SUPIR's restoration of one image by a loaded SUPIRModel (DESIGN section 7); no rows, no Ray.

    restoration = Restoration.from_checkpoint("checkpoints/supir-tiny", RestorationConfig())
    img = restoration.restore(lq_image, key="photo-1", caption="a red house")   # PIL in, PIL out

Per image:

1. upscale by ``scale`` (else ``upscale``), raise the short side to ``min_size`` and round both
   sides to a multiple of 64 (SUPIR's preprocessing): x_LQ, bicubic;
2. z_LQ = E_dr(x_LQ), x_stage1 = D(z_LQ), z_center = E(x_stage1) (tiled VAE for large images);
3. the restoration-guided sampler (model/sampler.py), in latent tiles for large images, with the
   prompt "<caption>, <positive prompt>" against the negative-quality prompt, noise seeded by
   (seed, key);
4. decode, colour fix against x_stage1 or x_LQ (wavelet or AdaIN), resize to the requested size.

:meth:`Restoration.round_trip` is steps 1, 2 and the resize alone: D(E(x_LQ)) or D(E_dr(x_LQ)), the
ablation rows beside the sampler (stages/ablations.py). The restore stage (stages/restore.py) wraps
this in a batch adapter: image bytes in, RESTORATIONS rows out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from PIL import Image

from catalog.config import check
from model.colorfix import COLOR_FIXES, color_fix
from model.devices import resolve_device, resolve_dtype
from model.images import to_pil, to_tensor
from model.sampler import (Conditioning, GuidedDenoiser, SamplerConfig, join_prompt, sample, sampling_sigmas,
                           seeded_generator)
from model.tiling import TiledDenoiser, TilingConfig, tiled_apply

ROUND_TRIPS = ("vae", "stage1")


@dataclass
class RestorationConfig:
    """How an image is restored. The `restore:` section (stages/restore.py RestoreConfig) is this
    plus the model to load, the device and the batch options."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Steps, churn, CFG, control scale, restoration guidance, prompts, seed."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    """Latent tiles for sampling and VAE tiles for large images."""

    color_fix: Literal["wavelet", "adain", "none"] = "wavelet"
    """Colour correction of the result against ``color_fix_reference``."""

    color_fix_reference: Literal["stage1", "lq"] = "stage1"
    """Whose low frequencies (wavelet) or channel statistics (adain) the result takes: SUPIR's
    x_stage1 = D(E_dr(x_LQ)), or the bicubic-upscaled LQ itself, for a prior VAE whose round trip
    shifts colours it did not see in training (issue 15: the demo's tiny VAE greys a magenta photo)."""

    clamp_stage1: Optional[bool] = None
    """Clamp x_stage1 = D(z_LQ) to [-1, 1] before it serves as the colour reference and as the
    input of z_center = E(x_stage1). null: the sampler preset's (paper true; released false: the
    released script uses the decode as it comes)."""

    min_size: int = 1024
    """The short side is raised to at least this many pixels before sampling (SUPIR: 1024)."""

    upscale: int = 1
    """Output size / input size, for rows without a ``scale`` column (the pairs table has one)."""

    use_captions: bool = True
    """Prepend each row's caption to the positive prompt (when the row has one)."""

    progress: bool = True
    """A progress bar over the sampling steps of each image."""

    def __post_init__(self) -> None:
        check(self.color_fix in COLOR_FIXES, "restore.color_fix", self.color_fix, "one of " + ", ".join(COLOR_FIXES))
        check(self.color_fix_reference in ("stage1", "lq"), "restore.color_fix_reference", self.color_fix_reference,
              "stage1 or lq")
        check(self.min_size >= 64 and self.min_size % 8 == 0, "restore.min_size", self.min_size,
              "a multiple of 8, >= 64")
        check(1 <= self.upscale <= 16, "restore.upscale", self.upscale, "an integer in [1, 16]")
        released = self.sampler.preset == "released"  # the restore-side settings of the sampler preset
        if self.clamp_stage1 is None:
            self.clamp_stage1 = not released
        if self.tiling.tiled_sampling is None:
            self.tiling.tiled_sampling = not released
        if self.tiling.tiled_vae is None:
            self.tiling.tiled_vae = not released
        if self.tiling.vae_groupnorm is None:
            self.tiling.vae_groupnorm = "shared" if released else "per_tile"


def working_size(width: int, height: int, scale: int, min_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((target w, h), (sampling w, h)): target = input * scale; sampling = target with the short side
    raised to min_size, each side rounded to a multiple of 64 (at least 64)."""
    tw, th = width * scale, height * scale
    k = max(1.0, min_size / min(tw, th))
    sw, sh = (max(64, int(round(v * k / 64.0)) * 64) for v in (tw, th))
    return (tw, th), (sw, sh)


class Restoration:
    """A SUPIRModel ready for inference on ``device`` in ``dtype``; :meth:`restore` restores one image.

    ``last_info`` describes the latest image: sampling_seconds (the sampler loop alone), steps,
    sampling_size and size (w, h).
    """

    def __init__(self, model: Any, cfg: RestorationConfig, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "auto"):
        self.cfg = cfg
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = resolve_dtype(dtype, self.device) if isinstance(dtype, str) else dtype
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if self.dtype == torch.float16 and getattr(self.model.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in float16 (its config says force_upcast): encode and decode in
            # float32, as diffusers' pipelines do; E_dr is a copy of the same encoder
            self.model.vae.to(torch.float32)
            self.model.encoder.to(torch.float32)
        self.sigmas = sampling_sigmas(cfg.sampler.num_steps)
        self.last_info: dict[str, Any] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, cfg: RestorationConfig, device: str = "auto", dtype: str = "auto",
                        prior: Optional[str] = None) -> "Restoration":
        """Load a checkpoint folder (model/checkpoint.py); ``prior`` replaces the prior source it records.
        In a 16-bit inference dtype every weight is loaded once, in that dtype."""
        from model.checkpoint import load_model

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        model = load_model(Path(path), prior_source=prior, device=dev, dtype=dt,
                           prior_dtype=None if dt == torch.float32 else dt)
        return cls(model, cfg, dev, dt)

    # -- the steps -----------------------------------------------------------------------------
    def prepare(self, img: Image.Image, scale: Optional[int] = None
                ) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor]:
        """(output size, working size, x_LQ): the image resized bicubic to the working size, (1, 3, H, W)."""
        (tw, th), (sw, sh) = working_size(img.width, img.height, scale or self.cfg.upscale, self.cfg.min_size)
        x_lq = to_tensor(img.resize((sw, sh), Image.Resampling.BICUBIC)).to(self.device, self.dtype)
        return (tw, th), (sw, sh), x_lq

    def vae(self, fn, x: torch.Tensor, encoder: bool, module: torch.nn.Module) -> torch.Tensor:
        """``fn`` (an encoder or the decoder) on ``x``, in tiles when tiling is on; with shared
        GroupNorm statistics, ``module``'s GroupNorms normalise with the whole image's."""
        t = self.cfg.tiling
        if not t.tiled_vae:
            return fn(x)
        shared = module if t.vae_groupnorm == "shared" else None
        if encoder:
            return tiled_apply(fn, x, t.encoder_tile_size, t.encoder_tile_overlap, 1 / self.model.vae_scale_factor,
                               shared)
        return tiled_apply(fn, x, t.decoder_tile_size, t.decoder_tile_overlap, self.model.vae_scale_factor, shared)

    def conditioning(self, caption: Optional[str], height: int, width: int) -> tuple[Conditioning, Conditioning]:
        """(positive, negative): "<caption>, <positive prompt>" and the negative prompt, with SDXL's size ids."""
        s = self.cfg.sampler
        positive = join_prompt(caption, s.positive_prompt, s.prompt_separator)
        hidden, pooled = self.model.encode_prompt([positive, s.negative_prompt])  # (2, 77, D), (2, P)
        if s.size_conditioning:  # the released script: original = target = 1024 x 1024, crop (0, 0)
            height = width = s.size_conditioning
        added = self.model.added_cond_kwargs(pooled, height, width)
        pos = Conditioning(hidden[:1], {k: v[:1] for k, v in added.items()})
        neg = Conditioning(hidden[1:], {k: v[1:] for k, v in added.items()})
        return pos, neg

    def _finish(self, out: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        result = to_pil(out)
        return result if result.size == size else result.resize(size, Image.Resampling.BICUBIC)

    # -- one image -----------------------------------------------------------------------------
    @torch.inference_mode()
    def restore(self, img: Image.Image, key: str, caption: Optional[str] = None,
                scale: Optional[int] = None) -> Image.Image:
        """One RGB image -> its restoration at ``scale`` (default ``upscale``) times its size; the
        noise is seeded by (sampler seed, ``key``)."""
        cfg, model = self.cfg, self.model
        (tw, th), (sw, sh), x_lq = self.prepare(img, scale)  # x_lq: (1, 3, H, W)

        z_lq = self.vae(model.encode_lq, x_lq, True, model.encoder).to(self.dtype)  # (1, 4, H/8, W/8)
        x_stage1 = self.vae(model.decode, z_lq, False, model.vae.decoder)  # (1, 3, H, W)
        x_stage1 = (x_stage1.clamp(-1, 1) if cfg.clamp_stage1 else x_stage1).to(self.dtype)
        z_center = self.vae(model.encode, x_stage1, True, model.vae.encoder).float()

        pos, neg = self.conditioning(caption if cfg.use_captions else None, sh, sw)
        denoiser = GuidedDenoiser(model, cfg.sampler, pos, neg, dtype=self.dtype)
        t = cfg.tiling
        if t.tiled_sampling and max(z_lq.shape[-2:]) > t.tile_size:
            denoiser = TiledDenoiser(denoiser, t.tile_size, t.tile_stride)
        generator = seeded_generator(cfg.sampler.seed, key)
        noise = torch.randn(z_lq.shape, generator=generator, dtype=torch.float32).to(self.device)
        t0 = time.perf_counter()
        z = sample(denoiser, noise, self.sigmas.to(self.device), cfg.sampler, z_lq=z_lq, z_center=z_center,
                   generator=generator, progress=cfg.progress)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        sampling_s = time.perf_counter() - t0

        out = self.vae(model.decode, z.to(self.dtype), False, model.vae.decoder).float()  # (1, 3, H, W)
        reference = x_lq if cfg.color_fix_reference == "lq" else x_stage1
        out = color_fix(out, reference.float(), cfg.color_fix)
        self.last_info = {"sampling_seconds": sampling_s, "steps": cfg.sampler.num_steps,
                          "sampling_size": (sw, sh), "size": (tw, th)}
        return self._finish(out, (tw, th))

    @torch.inference_mode()
    def round_trip(self, img: Image.Image, encoder: Literal["vae", "stage1"],
                   scale: Optional[int] = None) -> Image.Image:
        """x_LQ -> D(E(x_LQ)) (``vae``: the prior's own encoder) or D(E_dr(x_LQ)) (``stage1``) at the
        working size, resized back like :meth:`restore`; no sampling, no colour fix."""
        check(encoder in ROUND_TRIPS, "round trip encoder", encoder, " or ".join(ROUND_TRIPS))
        model = self.model
        (tw, th), (sw, sh), x_lq = self.prepare(img, scale)  # x_lq: (1, 3, H, W)
        encode, module = (model.encode_lq, model.encoder) if encoder == "stage1" else (model.encode, model.vae.encoder)
        t0 = time.perf_counter()
        z = self.vae(encode, x_lq, True, module).to(self.dtype)  # (1, 4, H/f, W/f)
        out = self.vae(model.decode, z, False, model.vae.decoder).clamp(-1, 1).float()  # (1, 3, H, W)
        self.last_info = {"sampling_seconds": time.perf_counter() - t0, "steps": 0, "sampling_size": (sw, sh),
                          "size": (tw, th)}
        return self._finish(out, (tw, th))
