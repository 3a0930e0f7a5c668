"""The degradation-robust encoder E_dr (SUPIR section 3.1): a trainable copy of the VAE encoder.

Stage 1 fine-tunes it so that the frozen decoder D maps E_dr(x_LQ) close to D(E(x_GT))
(DESIGN section 5). Sampling uses z_LQ = E_dr(x_LQ), the scaled posterior mean, as the control
input of the adaptor, and D(z_LQ) as the colour-fix reference.
"""
from __future__ import annotations

from typing import Optional

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class DegradationRobustEncoder(ModelMixin, ConfigMixin):
    """SDXL's VAE encoder + quant_conv with the VAE's own config; ``from_vae`` copies the weights."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        scaling_factor: float = 0.13025,
        shift_factor: Optional[float] = None,
        use_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            double_z=True,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None

    @classmethod
    def from_vae(cls, vae: AutoencoderKL) -> "DegradationRobustEncoder":
        """A trainable copy of ``vae``'s encoder (weights copied, requires_grad on)."""
        c = vae.config
        enc = cls(
            in_channels=c.in_channels,
            latent_channels=c.latent_channels,
            down_block_types=tuple(c.down_block_types),
            block_out_channels=tuple(c.block_out_channels),
            layers_per_block=c.layers_per_block,
            act_fn=c.act_fn,
            norm_num_groups=c.norm_num_groups,
            scaling_factor=c.scaling_factor,
            shift_factor=getattr(c, "shift_factor", None),
            use_quant_conv=getattr(c, "use_quant_conv", True),
            mid_block_add_attention=getattr(c, "mid_block_add_attention", True),
        )
        enc = enc.to(device=vae.device)  # float32 (the default dtype); the prior may be bf16
        enc.encoder.load_state_dict(vae.encoder.state_dict())
        if enc.quant_conv is not None:
            enc.quant_conv.load_state_dict(vae.quant_conv.state_dict())
        return enc.requires_grad_(True)

    def forward(self, images: torch.Tensor) -> DiagonalGaussianDistribution:
        """images in [-1, 1], (B, 3, H, W) -> the posterior over (B, 4, H/8, W/8) latents (unscaled)."""
        moments = self.encoder(images)  # (B, 8, H/8, W/8)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussianDistribution(moments)

    def encode_lq(self, images: torch.Tensor) -> torch.Tensor:
        """z_LQ: the posterior mean, scaled like the UNet's latents ((mean - shift) * scaling_factor)."""
        mean = self(images).mean  # (B, 4, H/8, W/8)
        if self.config.shift_factor is not None:
            mean = mean - self.config.shift_factor
        return mean * self.config.scaling_factor
