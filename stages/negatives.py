"""Negative-quality samples (SUPIR paper section 3.2; DESIGN section 4, negatives).

SUPIR steers sampling away from a negative-quality prompt with classifier-free guidance. For that
to work the model must have seen what the prompt means, so the training data includes images the
prior itself made from real training images by image-to-image (SDEdit, Meng et al. 2022) at
strength 0.5 toward the negative-quality prompt, captioned with that prompt.

    maker = NegativeMaker(NegativesConfig(prior="lake/priors/<digest>"))
    rows = maker({"pair_id": ids, "image_id": image_ids, "hq": png_bytes})   # numpy batch in, PAIRS rows out

Per source image and variant (all randomness from generators seeded by (seed, pair_id)):

1. the source crop x (a `pairs` HQ crop, or a random degrade.gt_size crop of an `images` row);
2. z_0 = E(x) with the prior's frozen VAE; sigmas = the sampler's N + 1 sigmas; SDEdit starts at
   index N - floor(N * strength) (diffusers' img2img convention), from x = z_0 + sigma_start * eps;
3. model/sampler.py's Euler loop over the remaining sigmas with CFG: the negative-quality prompt
   as the conditional branch, SDXL's zero embedding as the unconditional one; no churn, so a
   sample does not depend on its batch;
4. decode -> the row's ``hq``. The row's ``lq`` is that image degraded with the degrade stage's
   code (``lq: degrade``, the default), or the image itself (``lq: same``).

Why the generated image is ``hq``: in SUPIR a negative sample is a training *target* whose caption
is the negative prompt; the adaptor learns "LQ of a painterly, blurry, over-smooth image + this
caption -> that image", so at sampling time CFG with the same prompt as the negative branch
pushes away from it. The input side of a training pair is always a degradation of its target,
so ``lq`` is the target degraded exactly as for kind=degraded pairs (same DegradeConfig, its own
draws per pair, parameters stored in ``params`` so :func:`stages.degrade.regenerate` rebuilds it;
no USM sharpening: the generated image is the target as is). The source crop is not stored; its
key (source pair_id or crop position) and the PSNR of the sample against it are in ``params``.

Rows: kind "negative", caption = the prompt, status ok / decode_error / too_small / error. Uses
the prior only (no adaptor). Imports no Ray.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Optional

import numpy as np
import torch
from PIL import Image

from catalog import codec
from catalog.config import ConfigError, check
from catalog.resources import Resources, resource_keys
from catalog.batches import numpy_batch
from catalog.schemas import PAIR_COLUMNS, PAIR_DTYPES, pair_id_of
from degradations import DegradeConfig, degrade_target, draw_params, ops
from model.config import DTYPES as MODEL_DTYPES
from model.devices import resolve_device, resolve_dtype
from model.images import psnr, to_model_range
from model.prior import PriorModel, SDXLPrior, latent_shape, load_prior
from model.sampler import (NEGATIVE_QUALITY_PROMPT, GuidedDenoiser, SamplerConfig, sample, sampling_sigmas,
                           seeded_generator)

log = logging.getLogger(__name__)

KIND = "negative"
SOURCES = ("pairs", "images")


@dataclass
class NegativesConfig:
    """The `negatives:` section: SDEdit samples of the prior toward the negative-quality prompt."""

    prior: str = ""
    """The prior that makes the samples (folder, .safetensors file or hub id). Empty: the pipeline
    fills in the run's prior (model.prior, or the folder stage 0 trained)."""

    preset: Literal["tiny", "sdxl"] = "tiny"
    """Architecture assumed for an original-layout single-file prior (as model.preset)."""

    strength: float = 0.5
    """SDEdit strength: the fraction of the sampling schedule that is re-run (SUPIR: 0.5)."""

    prompt: str = NEGATIVE_QUALITY_PROMPT
    """The negative-quality prompt: the conditional branch of CFG, and the rows' caption."""

    num_steps: int = 30
    """Steps of the full schedule; SDEdit runs the last floor(num_steps * strength) of them."""

    cfg_scale: float = 5.0
    """Classifier-free guidance scale toward ``prompt`` (1: no guidance)."""

    seed: int = 0
    """Run seed; each pair's noise and degradation come from generators seeded by (seed, pair_id)."""

    source: Literal["pairs", "images"] = "images"
    """Where the HQ images come from: the kept `images` (filtered keep = true; a degrade.gt_size crop at a
    seeded position of the full-resolution image, as the degrade stage crops), or the HQ crops
    of ok `pairs/degraded` rows (USM-sharpened targets)."""

    variants_per_image: int = 1
    """Negative samples per source row (pair_id_of(image_id, "negative", "<source>/<variant>"))."""

    lq: Literal["degrade", "same"] = "degrade"
    """The rows' lq: the sample degraded with ``degrade`` (like kind=degraded pairs), or the sample itself."""

    degrade: DegradeConfig = field(default_factory=lambda: DegradeConfig(gt_size=128))
    """Degradation of the samples into lq (USM sharpening off). Its ``gt_size`` is the side of the square
    samples, pixels (a multiple of 8): a larger source is cropped at a seeded position, a smaller one
    gives status too_small."""

    like_pairs: bool = True
    """In a pipeline run with a `degrade:` section, use that section here (its gt_size included),
    so negative pairs have the same sizes and LQ statistics as the degraded ones (pipelines/prior.py)."""

    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""

    dtype: str = "auto"
    """Dtype of the prior: auto (bfloat16 on a GPU that has it, else float32), float32, float16, bfloat16."""

    batch_size: int = 8
    """Samples per sampler call (the rows of one Ray batch are split into calls of this size)."""

    rows_per_batch: int = 8
    """Rows of one Ray batch handed to an actor (one lake part each; pipelines/prior.py)."""

    resources: Resources = field(default_factory=lambda: Resources(gpus_per_worker=1.0))
    """Actors making samples, one prior each, and their GPUs (pipelines/prior.py)."""

    RENAMED: ClassVar[dict[str, str]] = {"micro_batch": "batch_size", "crop_size": "degrade.gt_size",
                                         **resource_keys(workers="actors", gpus="num_gpus_per_actor")}

    grid_rows: int = 8
    """Rows of the MLflow grid (source | negative | lq)."""

    def __post_init__(self) -> None:
        check(0.0 < self.strength <= 1.0, "negatives.strength", self.strength, "a number in (0, 1]")
        check(bool(self.prompt.strip()), "negatives.prompt", self.prompt, "a non-empty prompt")
        check(isinstance(self.num_steps, int) and 1 <= self.num_steps <= 1000, "negatives.num_steps",
              self.num_steps, "an integer in [1, 1000]")
        check(math.floor(self.num_steps * self.strength) >= 1, "negatives.num_steps", self.num_steps,
              f"at least one SDEdit step: num_steps * strength >= 1 (strength {self.strength})")
        check(self.cfg_scale >= 0, "negatives.cfg_scale", self.cfg_scale, "a number >= 0")
        check(isinstance(self.seed, int) and self.seed >= 0, "negatives.seed", self.seed, "an integer >= 0")
        check(self.source in SOURCES, "negatives.source", self.source, "pairs or images")
        size = self.degrade.gt_size
        check(size >= 32 and size % 8 == 0, "negatives.degrade.gt_size", size, "a multiple of 8, >= 32")
        check(self.variants_per_image >= 1, "negatives.variants_per_image", self.variants_per_image, "an integer >= 1")

        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "negatives.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.dtype == "auto" or self.dtype in MODEL_DTYPES, "negatives.dtype", self.dtype,
              "auto, float32, float16 or bfloat16")
        check(self.batch_size >= 1, "negatives.batch_size", self.batch_size, "an integer >= 1")
        check(self.rows_per_batch >= 1, "negatives.rows_per_batch", self.rows_per_batch, "an integer >= 1")
        self.resources.check("negatives")
        check(self.grid_rows >= 0, "negatives.grid_rows", self.grid_rows, "an integer >= 0")

    def degrade_config(self) -> DegradeConfig:
        """The degradation of the samples: ``degrade`` without USM sharpening, one variant per call."""
        return dataclasses.replace(self.degrade, usm_sharpen_gt=False, variants_per_image=1)


# ---------------------------------------------------------------------------------------------
# SDEdit in sigma space

def sdedit_start(num_steps: int, strength: float) -> int:
    """Index of the first sigma SDEdit runs from: N - floor(N * strength) (diffusers' img2img)."""
    return num_steps - min(int(num_steps * strength), num_steps)


@torch.no_grad()
def sdedit(model: PriorModel, images: torch.Tensor, noise: torch.Tensor, cfg: NegativesConfig,
           strength: Optional[float] = None) -> torch.Tensor:
    """Image-to-image with the prior: images (B, 3, H, W) in [-1, 1] -> samples (B, 3, H, W) in [-1, 1].

    ``noise`` (B, 4, H/f, W/f) ~ N(0, I) (f: the VAE's scale factor) is the only randomness (no churn). The start is
    x = E(images) + sigma_start * noise: the forward process of the variance-exploding
    (sigma-space) view, where x / sqrt(1 + sigma^2) is the UNet's input (model/sampler.py)."""
    strength = cfg.strength if strength is None else strength
    device, dtype = model.unet.device, model.unet.dtype
    b, _, h, w = images.shape
    sigmas = sampling_sigmas(cfg.num_steps)[sdedit_start(cfg.num_steps, strength):].to(device)  # (k + 1,)
    z0 = model.encode(images.to(device, dtype)).float()  # (B, 4, H/f, W/f), scaled
    x_start = z0 + float(sigmas[0]) * noise.to(device)
    scfg = SamplerConfig(num_steps=len(sigmas) - 1, s_churn=0.0, cfg_scale=cfg.cfg_scale, linear_cfg=False,
                         tau_r=0.0, seed=cfg.seed)
    positive = model.conditioning([cfg.prompt] * b, h, w)
    negative = model.conditioning([""] * b, h, w, zero=[True] * b) if scfg.uses_cfg else None
    denoiser = GuidedDenoiser(model, scfg, positive, negative, dtype=dtype)
    # sample() starts from sqrt(1 + sigma_0^2) * noise (pure noise); hand it x_start rescaled so it starts at x_start
    z = sample(denoiser, x_start / (1.0 + float(sigmas[0]) ** 2) ** 0.5, sigmas, scfg)
    return model.decode(z.to(dtype)).float().clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# the stage callable

def _crop_position(key: str, seed: int, h: int, w: int, size: int) -> tuple[int, int]:
    g = seeded_generator(seed, f"crop:{key}")
    return int(torch.randint(h - size + 1, (), generator=g)), int(torch.randint(w - size + 1, (), generator=g))


class NegativeMaker:
    """Stage callable: a numpy batch of HQ images -> PAIRS rows of kind "negative".

    Input columns: image_id, and either ``hq`` (PNG crops, with ``pair_id`` of the source pair;
    source: pairs) or ``bytes`` (original images; source: images). ``prior`` passes an already
    loaded SDXLPrior (tests) instead of loading ``cfg.prior``."""

    def __init__(self, cfg: NegativesConfig, prior: Optional[SDXLPrior] = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, self.device, cuda_fallback=torch.float32)
        if prior is None:
            if not cfg.prior:
                raise ConfigError("negatives.prior = '' is not allowed here: expected the prior's folder, file or hub "
                                  "id (pipelines/prior.py fills it in from model.prior or stage 0)")
            prior = load_prior(cfg.prior, cfg.preset, dtype=dtype)
        self.model = PriorModel(prior.to(device=self.device, dtype=dtype).freeze())
        self.degrade_cfg = cfg.degrade_config()
        # LQ size = HQ size / scale; 1 when lq is the sample itself or resized back to the HQ size
        self.scale = 1 if cfg.lq == "same" or self.degrade_cfg.lq_resize_to_gt else self.degrade_cfg.scale
        self.params = {"strength": cfg.strength, "num_steps": cfg.num_steps, "cfg_scale": cfg.cfg_scale,
                       "prompt": cfg.prompt, "prior": cfg.prior or getattr(prior, "source", None), "lq": cfg.lq,
                       "gt_size": cfg.degrade.gt_size}

    def _sources(self, batch: Mapping[str, np.ndarray], i: int) -> tuple[str, str, Any]:
        """(image_id, source key, encoded bytes) of input row i."""
        image_id = str(batch["image_id"][i])
        if "hq" in batch:
            key = str(batch["pair_id"][i]) if "pair_id" in batch else image_id
            return image_id, key, batch["hq"][i]
        return image_id, "image", batch["bytes"][i]

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.cfg
        rows: list[dict[str, Any]] = []
        todo: list[tuple[int, torch.Tensor]] = []  # (row index, source crop (3, S, S))
        for i in range(len(batch["image_id"])):
            image_id, key, data = self._sources(batch, i)
            try:
                if data is None:
                    raise ValueError("no image bytes")
                img = codec.decode_array(bytes(data))
                status, error = "ok", None
            except Exception as e:  # noqa: BLE001 - any decoder failure is a row status
                img, status, error = None, "decode_error", f"{type(e).__name__}: {e}"
            if img is not None and min(img.shape[:2]) < cfg.degrade.gt_size:
                status, error = "too_small", f"image is {img.shape[1]}x{img.shape[0]}, smaller than degrade.gt_size {cfg.degrade.gt_size}"
            for v in range(cfg.variants_per_image):
                variant = f"{key}/{v}"
                pair_id = pair_id_of(image_id, KIND, variant)
                rows.append({"pair_id": pair_id, "image_id": image_id, "kind": KIND, "status": status, "error": error,
                             "hq": None, "lq": None, "scale": self.scale, "seed": cfg.seed, "params": None,
                             "caption": cfg.prompt, "_source": key})
                if status == "ok":
                    h, w = img.shape[:2]
                    top, left = _crop_position(pair_id, cfg.seed, h, w, cfg.degrade.gt_size)
                    rows[-1]["_crop"] = [top, left]
                    todo.append((len(rows) - 1, to_model_range(img[top : top + cfg.degrade.gt_size, left : left + cfg.degrade.gt_size])))
        for start in range(0, len(todo), cfg.batch_size):
            self._make(rows, todo[start : start + cfg.batch_size])
        return numpy_batch({c: [r[c] for r in rows] for c in PAIR_COLUMNS}, PAIR_DTYPES)

    def _make(self, rows: list[dict[str, Any]], chunk: list[tuple[int, torch.Tensor]]) -> None:
        cfg = self.cfg
        try:
            x = torch.stack([t for _, t in chunk])  # (b, 3, S, S)
            shape = latent_shape(self.model.vae, 1, cfg.degrade.gt_size)[1:]  # (4, S/f, S/f)
            noise = torch.stack([torch.randn(shape, generator=seeded_generator(cfg.seed, rows[i]["pair_id"]))
                                 for i, _ in chunk])  # per pair, independent of the batch
            out = sdedit(self.model, x, noise, cfg).cpu()  # (b, 3, S, S)
            dist = psnr(out, x)
        except Exception as e:  # noqa: BLE001 - a failed chunk fails its rows, not the batch
            log.exception("negatives: SDEdit failed")
            for i, _ in chunk:
                rows[i].update(status="error", error=f"{type(e).__name__}: {e}")
            return
        for j, (i, _) in enumerate(chunk):
            row = rows[i]
            try:
                target = ops.quantise(((out[j : j + 1] + 1) / 2).clamp(0, 1))  # (1, 3, S, S) on the 8-bit grid
                p: dict[str, Any] = {}
                if cfg.lq == "degrade":
                    p = draw_params(self.degrade_cfg, row["pair_id"])
                    lq = degrade_target(target, p)
                else:
                    lq = target
                p["negative"] = {**self.params, "seed": cfg.seed, "source": row["_source"], "crop": row["_crop"],
                                 "psnr_to_source": round(float(dist[j]), 3)}
                row.update(hq=ops.encode_png(target), lq=ops.encode_png(lq), params=json.dumps(p, sort_keys=True))
            except Exception as e:  # noqa: BLE001
                row.update(status="error", error=f"{type(e).__name__}: {e}")




def preview_grid(rows: Mapping[str, Any], sources: Optional[Mapping[str, bytes]] = None, n: int = 8,
                 cell: int = 128) -> Image.Image:
    """A grid of up to n ok negative rows: source crop (when ``sources`` has it, by source key) |
    negative sample (hq) | lq. For MLflow artifacts."""
    from evaluation.grids import make_grid

    sources = sources or {}
    grid = []
    for status, hq, lq, params in zip(rows["status"], rows["hq"], rows["lq"], rows["params"]):
        if status != "ok" or len(grid) >= n:
            continue
        src = sources.get(json.loads(params)["negative"]["source"])
        blank = Image.new("RGB", (8, 8), "white")
        grid.append([Image.open(io.BytesIO(src)).convert("RGB") if src is not None else blank,
                     Image.open(io.BytesIO(hq)).convert("RGB"), Image.open(io.BytesIO(lq)).convert("RGB")])
    return make_grid(grid, ["source", "negative (hq)", "lq"], cell)
