"""Model configuration: the typed :class:`ModelConfig` and the architectures of the two presets.

``sdxl`` is SDXL base 1.0 written out (the diffusers configs of stabilityai/stable-diffusion-xl-
base-1.0, so nothing is downloaded to build it, e.g. on the meta device). ``tiny`` has the same
shape (three UNet levels, DownBlock2D then two cross-attention levels, ``text_time`` added
embedding, two CLIP text encoders with the real 49408-token vocabulary) at channel widths that
run a forward and backward on a CPU in about a second. Its VAE downsamples 4x, not 8x (see
TINY_VAE): every stage reads the factor from the VAE (``model.prior.vae_scale_factor``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Optional

from catalog.config import check

PRESETS = ("tiny", "sdxl", "sdxl_trimmed")
DTYPES = ("float32", "bfloat16", "float16")

# ---------------------------------------------------------------------------------------------
# SDXL base 1.0 (diffusers layout). UNet 2567.5M parameters, VAE encoder 34.2M.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],  # diffusers' historical name: these are head counts (64 ch each)
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "upcast_attention": None,
    "resnet_time_scale_shift": "default",
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 1280 pooled text + 6 time ids x 256
    "class_embed_type": None,
    "num_class_embeds": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "time_embedding_type": "positional",
}

SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

# CLIP ViT-L/14 text tower (SDXL text_encoder) and OpenCLIP ViT-bigG/14 (text_encoder_2).
SDXL_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SDXL_TEXT_ENCODER_2: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# ---------------------------------------------------------------------------------------------
# tiny: SDXL-shaped. Text widths 32 + 64 -> cross attention 96; pooled 64 + 6 x 8 time ids = 112.
# The two encoders have different widths, as in SDXL (768, 1280): diffusers' single-file loader
# tells them apart by width.
TINY_UNET: dict[str, Any] = {
    **SDXL_UNET,
    "sample_size": 32,
    # Attention on the lowest-resolution level only, one resnet per level (SDXL: attention on levels
    # 2 and 3, two resnets). The tiny VAE's 4x latents are 4x the pixels of SDXL's 8x at the same image
    # size, so a 1024 px restore samples 256x256 latents, and level 2's self-attention over 64x64
    # tokens per 128-latent tile (SDXL's level 2 sees 32x32 at most) held 47% of a 33 s step on 2 CPU
    # cores (issue 15). Measured per tile forward (2 x 128 x 128, CPU seconds on the loaded 2-core box,
    # bench/restore.py for the end-to-end number): 13.3 with attention on levels 2-3, two resnets and
    # 128-channel ZeroSFT hidden convs; 6.6 with attention on level 3 and 32 hidden channels; 3.2 with one
    # resnet per level as well.
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "cross_attention_dim": 96,
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [2, 4, 4],
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 112,
    # 8 groups, not SDXL's 32: 32 groups over 32 channels would be a per-channel (instance) norm,
    # which throws away each feature map's mean and contrast and slows training a lot
    "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    **SDXL_VAE,
    # Three levels: 4x downsampling with SDXL's 4 latent channels (12 values per latent value, SDXL
    # 48). At tiny widths and a CPU budget an 8x VAE cannot reconstruct better than bicubic
    # upscaling of a degraded LQ, so stage 1 (bounded by D(E(x_GT))) could not either. Measured
    # on the demo photos, 1500 steps (about 3 min on 2 cores), held-out 128 px crops:
    # [16, 32, 64] (4x) 29.4 dB vs [16, 32, 64, 64] (8x) 26.9 dB; on degraded pairs D(E(x_GT)) was
    # 28.2 dB against bicubic's 24.9 (8x: 25.7). Narrow at full resolution, where the compute is.
    # 8 groups for the reason given for the UNet (15.0 dB with 32 groups vs 21.0 dB with 8 after
    # 300 steps).
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
    # No self-attention in the mid block (SDXL has one, over its 8x latent): at the 4x latent of a
    # 1024 px image it attends over 256 x 256 = 65536 tokens, which took 16 of 19 s of an encode and
    # 13 of 19 s of a decode on 2 CPU cores (issue 15's 1024 px restore runs two of each). Without
    # it: 2.5 s and 5.5 s, 5% fewer parameters.
    "mid_block_add_attention": False,
}
_TINY_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
TINY_TEXT_ENCODER: dict[str, Any] = {**_TINY_TEXT, "hidden_act": "quick_gelu", "pad_token_id": 49407}
TINY_TEXT_ENCODER_2: dict[str, Any] = {**_TINY_TEXT, "hidden_size": 64, "intermediate_size": 128, "projection_dim": 64,
                                        "hidden_act": "gelu", "pad_token_id": 0}

ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    "sdxl": {
        "unet": SDXL_UNET,
        "vae": SDXL_VAE,
        "text_encoder": SDXL_TEXT_ENCODER,
        "text_encoder_2": SDXL_TEXT_ENCODER_2,
    },
    "tiny": {
        "unet": TINY_UNET,
        "vae": TINY_VAE,
        "text_encoder": TINY_TEXT_ENCODER,
        "text_encoder_2": TINY_TEXT_ENCODER_2,
    },
}

# ``sdxl_trimmed``: the same SDXL prior with the paper's trimmed adaptor, for training from scratch.
ARCHITECTURES["sdxl_trimmed"] = ARCHITECTURES["sdxl"]

# The paper's trimmed adaptor (section 3.1: "we trim half of the ViT blocks in each encoder
# block"; official config comment: transformer_depth [1, 2, 10] -> [1, 1, 4]). ``sdxl`` is not
# here: the released SUPIR-v0Q/v0F weights are untrimmed (the prior's depth, mid block 10).
TRIMMED_DEPTH = {"sdxl_trimmed": (1, 1, 4), "tiny": (1, 1, 1)}
# ZeroSFT's hidden width scaled with the preset: SUPIR's 128 against SDXL's 320 channels at level 1;
# the tiny UNet has 32 there, and 128 hidden 3x3 convs at full latent resolution cost more than the
# whole tiny UNet level they condition
SFT_HIDDEN_CHANNELS = {"sdxl": 128, "sdxl_trimmed": 128, "tiny": 32}


def architecture(preset: str) -> dict[str, dict[str, Any]]:
    """Deep copies of the four component configs of ``preset`` (unet, vae, text encoders)."""
    check(preset in ARCHITECTURES, "model.preset", preset, "one of " + ", ".join(PRESETS))
    return copy.deepcopy(ARCHITECTURES[preset])


@dataclass
class ModelConfig:
    """The SUPIR model: which prior, and how the trainable parts are shaped."""

    preset: Literal["tiny", "sdxl", "sdxl_trimmed"] = "tiny"
    """Architecture of the prior when it is built with random weights (``prior: null``) or read
    from a single file without its own config; also chooses the default adaptor depth: ``sdxl``
    untrimmed (1, 2, 10; mid 10) as the released SUPIR weights, ``sdxl_trimmed`` the paper's
    (1, 1, 4) on the same SDXL prior (training from scratch), ``tiny`` (1, 1, 1)."""

    prior: Optional[str] = None
    """SDXL base weights: a local diffusers folder (unet/, vae/, text_encoder/, text_encoder_2/),
    a single ``.safetensors`` file (the original sd_xl_base_1.0 layout, or this project's prior
    file, see model/prior.py), or a hub id such as stabilityai/stable-diffusion-xl-base-1.0.
    null builds the preset's architecture with random weights (the tiny demo before stage 0)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the frozen prior's weights. The trainable parts stay float32 (train under autocast)."""

    adaptor_transformer_depth: Optional[tuple[int, ...]] = None
    """Transformer blocks per adaptor encoder stage, one entry per UNet down block (SDXL's first
    stage has no attention, its entry is unused). null: the preset's depth: the prior's own
    (1, 2, 10) for sdxl, as the released SUPIR checkpoints; (1, 1, 4) for sdxl_trimmed, as the paper."""

    adaptor_mid_transformer_depth: Optional[int] = None
    """Transformer blocks in the adaptor's mid block. null: the last stage's depth (as sgm does)."""

    control_scale: float = 1.0
    """Default control scale s of the connectors (0 reproduces the prior UNet exactly)."""

    sft_hidden_channels: Optional[int] = None
    """Hidden channels of ZeroSFT's shared 3x3 conv. null: the preset's (SUPIR's 128 for sdxl, 32 for tiny)."""

    cross_attn_head_dim: int = 64
    """Channels per head of the two ZeroCrossAttn modules (SUPIR: 64)."""

    zero_init_cross_attn: bool = True
    """Zero-initialise ZeroCrossAttn's output projection, so that it starts as the identity (the
    released code has this commented out; see model/connectors.py). Either way the untrained model
    equals the prior only at control scale 0: at init ZeroSFT gives GroupNorm(H), not H."""

    seed: int = 0
    """Seed of the random initialisation (prior weights when ``prior`` is null, and the
    connectors' non-zero convs)."""

    gradient_checkpointing: bool = False
    """Recompute activations of the adaptor and of the prior's decoder in backward (saves memory)."""

    def __post_init__(self) -> None:
        check(self.preset in PRESETS, "model.preset", self.preset, "one of " + ", ".join(PRESETS))
        check(self.dtype in DTYPES, "model.dtype", self.dtype, "one of " + ", ".join(DTYPES))
        check(self.prior is None or (isinstance(self.prior, str) and self.prior.strip() != ""),
              "model.prior", self.prior, "null, a folder, a .safetensors file or a hub id")
        if self.adaptor_transformer_depth is not None:
            depth = tuple(self.adaptor_transformer_depth)
            check(len(depth) > 0 and all(isinstance(d, int) and d >= 1 for d in depth),
                  "model.adaptor_transformer_depth", list(depth),
                  "a list of integers >= 1, one per UNet down block")
            self.adaptor_transformer_depth = depth
        if self.adaptor_mid_transformer_depth is not None:
            check(isinstance(self.adaptor_mid_transformer_depth, int) and self.adaptor_mid_transformer_depth >= 1,
                  "model.adaptor_mid_transformer_depth", self.adaptor_mid_transformer_depth, "an integer >= 1 or null")
        check(isinstance(self.control_scale, (int, float)) and 0.0 <= self.control_scale <= 10.0,
              "model.control_scale", self.control_scale, "a number in [0, 10]")
        check(self.sft_hidden_channels is None or (isinstance(self.sft_hidden_channels, int)
                                                   and self.sft_hidden_channels >= 1),
              "model.sft_hidden_channels", self.sft_hidden_channels, "an integer >= 1 or null (the preset's)")
        check(isinstance(self.cross_attn_head_dim, int) and self.cross_attn_head_dim >= 1,
              "model.cross_attn_head_dim", self.cross_attn_head_dim, "an integer >= 1")
        check(isinstance(self.seed, int) and self.seed >= 0, "model.seed", self.seed, "an integer >= 0")

    def sft_hidden(self) -> int:
        """ZeroSFT's hidden channels: the configured number, else the preset's."""
        return self.sft_hidden_channels or SFT_HIDDEN_CHANNELS[self.preset]

    def adaptor_depths(self, unet_config: dict[str, Any]) -> tuple[list[int], int]:
        """(depth per down block, mid depth) of the adaptor for a prior UNet with ``unet_config``.

        Raises ConfigError when the depth does not fit the prior: one entry per down block, each
        at most the prior's depth (the adaptor copies the first blocks of each prior stack).
        """
        n = len(unet_config["down_block_types"])
        prior = unet_config["transformer_layers_per_block"]
        prior = [prior] * n if isinstance(prior, int) else list(prior)
        if self.adaptor_transformer_depth is None:
            trimmed = TRIMMED_DEPTH.get(self.preset)
            depth = list(trimmed) if trimmed is not None and len(trimmed) == n else prior
        else:
            depth = list(self.adaptor_transformer_depth)
        check(len(depth) == n, "model.adaptor_transformer_depth", depth,
              f"{n} entries, one per down block of the prior UNet")
        check(all(d <= p for d, p in zip(depth, prior)), "model.adaptor_transformer_depth", depth,
              f"at most the prior's depth {prior} in each stage")
        mid = self.adaptor_mid_transformer_depth or depth[-1]
        check(mid <= prior[-1], "model.adaptor_mid_transformer_depth", mid,
              f"at most the prior's mid depth {prior[-1]}")
        return depth, mid


def torch_dtype(name: str):
    """'bfloat16' -> torch.bfloat16."""
    import torch

    check(name in DTYPES, "model.dtype", name, "one of " + ", ".join(DTYPES))
    return getattr(torch, name)
