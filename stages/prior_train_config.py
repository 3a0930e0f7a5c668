"""The `prior_train:` section of a run config: stage 0's settings (stages/prior_train.py).

Apart from the training code so that config loading (pipelines/config.py) and the checks of every
field do not need the training loops. Imports no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from catalog.config import check, check_prob
from catalog.resources import Resources, resource_keys
from model.sampler import NEGATIVE_QUALITY_PROMPT


@dataclass
class PriorTrainConfig:
    """The `prior_train:` section: stage 0, training the prior of a preset without pretrained weights."""

    vae_steps: int = 1000
    """Optimizer steps of the autoencoder."""

    unet_steps: int = 500
    """Optimizer steps of the latent diffusion UNet."""

    crop_size: int = 64
    """Side of the square HQ training crops, pixels (a multiple of 8: SDXL's VAE downsamples 8x, the tiny one 4x).
    Cut from the kept images, not from pairs: unrelated to degrade.gt_size (eval_crop_size is the knob to match it)."""

    batch_size: int = 8
    """Crops per optimizer step (both parts)."""

    vae_lr: float = 2e-3
    """Peak AdamW learning rate of the autoencoder (linear warmup, cosine decay to 10%; on the
    tiny preset 2e-3 beat 1e-3 and 5e-3 by 1.2 dB or more after 300 steps)."""

    unet_lr: float = 1e-3
    """Peak AdamW learning rate of the UNet (linear warmup, cosine decay to 10%)."""

    warmup_steps: int = 50
    """Linear learning-rate warmup, steps (each part)."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    grad_clip: float = 1.0
    """Gradient norm clipping (0: off)."""

    kl_weight: float = 1e-6
    """Weight of the KL term of the autoencoder (Rombach et al. 2022: 1e-6)."""

    min_scale: float = 0.5
    """Crops are cut from the image resized by a random factor in [min_scale, 1] (1: full resolution only)."""

    prompt_dropout: float = 0.1
    """Probability that a sample's text conditioning is zeroed (the unconditional branch of CFG)."""

    negative_prob: float = 0.2
    """Probability that a crop is blurred (4x down, bilinear up) and captioned with ``negative_prompt``."""

    recolor: float = 0.0
    """Probability that an autoencoder training crop is recoloured: its RGB channels permuted and
    each remapped to a random sub-range of [-1, 1] (:func:`recolor`), for a VAE trained on a few
    photos that must reproduce colours they lack. Measured on the demo (1500 steps, 7 photos, the
    sunset held out), it removed one seed's pink cast on the sky, but over seeds 0-2 held-out PSNR
    went from 28.9 to 29.1 dB on average, inside the seeds' own spread (27.8-29.8), so the demo
    leaves it off. The UNet always trains on the true colours."""

    negative_prompt: str = NEGATIVE_QUALITY_PROMPT
    """The negative-quality caption taught with ``negative_prob``."""

    captions: Literal["captions", "none"] = "captions"
    """Text of each image: its row in the `captions` table ("captions"; empty when it has none), or
    always empty ("none": an unconditional model that still takes text)."""

    holdout_images: int = 1
    """Images kept out of training; held-out PSNR and eval loss are measured on their crops."""

    eval_crops: int = 16
    """Held-out crops (full resolution, deterministic positions) for PSNR and the eval loss."""

    eval_crop_size: int = 0
    """Side of the held-out crops, pixels (0: crop_size). Set it to the size the prior will see,
    e.g. the degrade stage's gt_size (the demo: 128)."""

    sample_num_steps: int = 20
    """Euler steps of the sample grid drawn after training (0: no grid)."""

    log_every: int = 20
    """Log losses to MLflow every this many steps."""

    seed: int = 0
    """Seed of the crops, noise, timesteps and dropout (model init uses model.seed)."""

    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""

    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """bf16 autocast of the training forward passes. auto: on a GPU, and on a CPU with native bf16
    (AVX512-BF16/AMX, where the tiny VAE step ran 1.7x faster); evaluation stays float32."""

    num_threads: int = 0
    """torch CPU threads while training (0: leave torch's setting)."""

    resources: Resources = field(default_factory=Resources)
    """The one Ray task that trains the prior (pipelines/prior.py): its CPUs, and its GPUs when the
    cluster has GPUs; workers must be 1."""

    RENAMED: ClassVar[dict[str, str]] = {"sample_steps": "sample_num_steps", **resource_keys(gpus="num_gpus")}

    output_dir: str = ""
    """Folder for trained priors, one digest-named subfolder each; empty: <lake>/priors (local lakes)."""

    progress: bool = True
    """Progress bars over the training steps."""

    def __post_init__(self) -> None:
        for key in ("vae_steps", "unet_steps"):
            v = getattr(self, key)
            check(isinstance(v, int) and v >= 0, f"prior_train.{key}", v, "an integer >= 0")
        check(isinstance(self.crop_size, int) and self.crop_size >= 32 and self.crop_size % 8 == 0,
              "prior_train.crop_size", self.crop_size, "a multiple of 8, >= 32")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "prior_train.batch_size", self.batch_size,
              "an integer >= 1")
        for key in ("vae_lr", "unet_lr"):
            v = getattr(self, key)
            check(0 < v < 1, f"prior_train.{key}", v, "a learning rate in (0, 1)")
        check(self.warmup_steps >= 0, "prior_train.warmup_steps", self.warmup_steps, "an integer >= 0")
        check(self.weight_decay >= 0, "prior_train.weight_decay", self.weight_decay, "a number >= 0")
        check(self.grad_clip >= 0, "prior_train.grad_clip", self.grad_clip, "a number >= 0 (0: off)")
        check(self.kl_weight >= 0, "prior_train.kl_weight", self.kl_weight, "a number >= 0")
        check(0 < self.min_scale <= 1, "prior_train.min_scale", self.min_scale, "a number in (0, 1]")
        check_prob(self.prompt_dropout, "prior_train.prompt_dropout")
        check_prob(self.negative_prob, "prior_train.negative_prob")
        check_prob(self.recolor, "prior_train.recolor")
        check(self.holdout_images >= 0, "prior_train.holdout_images", self.holdout_images, "an integer >= 0")
        check(self.eval_crops >= 1, "prior_train.eval_crops", self.eval_crops, "an integer >= 1")
        check(self.eval_crop_size == 0 or (self.eval_crop_size >= 32 and self.eval_crop_size % 8 == 0),
              "prior_train.eval_crop_size", self.eval_crop_size, "0 (crop_size) or a multiple of 8, >= 32")
        check(self.sample_num_steps >= 0, "prior_train.sample_num_steps", self.sample_num_steps, "an integer >= 0")
        check(self.log_every >= 1, "prior_train.log_every", self.log_every, "an integer >= 1")
        check(isinstance(self.seed, int) and self.seed >= 0, "prior_train.seed", self.seed, "an integer >= 0")
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "prior_train.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.mixed_precision in ("auto", "bf16", "no"), "prior_train.mixed_precision", self.mixed_precision,
              "auto, bf16 or no")
        check(self.num_threads >= 0, "prior_train.num_threads", self.num_threads, "an integer >= 0")
        self.resources.check("prior_train")
        check(self.resources.workers == 1, "prior_train.resources.workers", self.resources.workers,
              "1 (stage 0 trains in one Ray task)")


def use_bf16(mode: str, device: torch.device) -> bool:
    """Whether ``mixed_precision`` (auto, bf16, no) means bf16 autocast on ``device``."""
    if mode != "auto":
        return mode == "bf16"
    if device.type == "cuda":
        return True
    try:  # a CPU with native bf16 matmul/conv (oneDNN); emulated bf16 would be slower than float32
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
