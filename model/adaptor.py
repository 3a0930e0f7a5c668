"""The adaptor (SUPIR's GLVControl, paper section 3.1): a trainable copy of the SDXL UNet encoder.

conv_in, the time and added (text_time) embeddings, the down blocks and the mid block of the
prior UNet, built with diffusers' own blocks under the same module names (so the prior's state
dict copies straight in), plus ``lq_conv_in``: a zero-initialised 3x3 conv that adds z_LQ to
conv_in(x_t) (sgm's ``input_hint_block``). The output is one feature map per UNet skip
connection, in the UNet's order, plus the mid block's output: the X_c of the connectors.

Trimming (the paper halves the ViT blocks of each encoder stage; the official config's comment
"transformer_depth: [1, 2, 10] -> [1, 1, 4]") is the ``transformer_layers_per_block`` /
``mid_transformer_layers`` config; a trimmed stack copies the first blocks of the prior's stack.

Parameter count at SDXL scale (checked in tests): 1243.4M untrimmed, 597.8M trimmed, counting
everything here: conv_in, the zero conv, time and added embeddings, down and mid blocks.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block
from torch import nn

from catalog.config import ConfigError


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (ControlNet's zero convolution)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# UNet options the adaptor does not implement (SDXL uses none of them).
_UNSUPPORTED = {"class_embed_type": None, "num_class_embeds": None, "encoder_hid_dim_type": None,
                "time_cond_proj_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
                "center_input_sample": False, "dual_cross_attention": False, "only_cross_attention": False,
                "time_embedding_type": "positional", "class_embeddings_concat": False,
                "attention_type": "default", "addition_embed_type": "text_time"}


def run_encoder(h: torch.Tensor, down_blocks, mid_block, emb: torch.Tensor, context: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The UNet encoder walk shared by the prior and the adaptor: down blocks then mid block.

    ``h`` is the conv_in output; returns (mid block output, skip list [h, every down-block output])."""
    skips = [h]
    for block in down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips.extend(res)
    return mid_block(h, emb, encoder_hidden_states=context), skips


class GLVControl(ModelMixin, ConfigMixin):
    """The trainable encoder copy. ``forward`` -> list of X_c (skips in UNet order, then mid)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 4,
        down_block_types: Sequence[str] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels: Sequence[int] = (320, 640, 1280),
        layers_per_block: int = 2,
        transformer_layers_per_block: Sequence[int] = (1, 2, 10),
        mid_transformer_layers: Optional[int] = None,
        attention_head_dim: Sequence[int] = (5, 10, 20),  # diffusers' name for the number of heads
        cross_attention_dim: int = 2048,
        use_linear_projection: bool = True,
        upcast_attention: Optional[bool] = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        downsample_padding: int = 1,
        mid_block_type: str = "UNetMidBlock2DCrossAttn",
        mid_block_scale_factor: float = 1.0,
        resnet_time_scale_shift: str = "default",
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 2816,
        conv_in_kernel: int = 3,
    ):
        super().__init__()
        n = len(down_block_types)
        heads = [attention_head_dim] * n if isinstance(attention_head_dim, int) else list(attention_head_dim)
        depth = list(transformer_layers_per_block)
        mid_depth = mid_transformer_layers or depth[-1]

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        # Z in "conv_in(x_t) + Z(z_LQ)": zero at init, so the adaptor starts as the prior's encoder.
        self.lq_conv_in = zero_module(nn.Conv2d(conditioning_channels, block_out_channels[0], 3, padding=1))

        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)
        self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type,
                num_layers=layers_per_block,
                transformer_layers_per_block=depth[i],
                in_channels=input_channel,
                out_channels=output_channel,
                temb_channels=time_embed_dim,
                add_downsample=i < n - 1,
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads[i],
                downsample_padding=downsample_padding,
                use_linear_projection=use_linear_projection,
                upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift,
                attention_head_dim=heads[i],
            ))
        self.mid_block = get_mid_block(
            mid_block_type,
            temb_channels=time_embed_dim,
            in_channels=block_out_channels[-1],
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=mid_depth,
            num_attention_heads=heads[-1],
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            attention_head_dim=heads[-1],
        )

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, transformer_layers_per_block: Optional[Sequence[int]] = None,
                  mid_transformer_layers: Optional[int] = None, copy_weights: bool = True) -> "GLVControl":
        """A copy of ``unet``'s encoder with the given depth; weights copied where the names match."""
        c = unet.config
        for key, allowed in _UNSUPPORTED.items():
            if c.get(key, allowed) != allowed:
                raise ConfigError(f"unet.{key} = {c.get(key)!r} is not allowed: the adaptor supports {allowed!r}")
        if c.num_attention_heads is not None:
            raise ConfigError(f"unet.num_attention_heads = {c.num_attention_heads!r} is not allowed: expected null "
                              "(SDXL configs give head counts as attention_head_dim)")
        n = len(c.down_block_types)
        prior_depth = c.transformer_layers_per_block
        prior_depth = [prior_depth] * n if isinstance(prior_depth, int) else list(prior_depth)
        depth = list(transformer_layers_per_block or prior_depth)
        if not isinstance(c.layers_per_block, int) or not isinstance(c.cross_attention_dim, int):
            raise ConfigError("unet.layers_per_block and unet.cross_attention_dim must be single integers for the adaptor")
        adaptor = cls(
            in_channels=c.in_channels,
            conditioning_channels=c.in_channels,
            down_block_types=tuple(c.down_block_types),
            block_out_channels=tuple(c.block_out_channels),
            layers_per_block=c.layers_per_block,
            transformer_layers_per_block=tuple(depth),
            mid_transformer_layers=mid_transformer_layers or depth[-1],
            attention_head_dim=c.attention_head_dim if isinstance(c.attention_head_dim, int) else tuple(c.attention_head_dim),
            cross_attention_dim=c.cross_attention_dim,
            use_linear_projection=c.use_linear_projection,
            upcast_attention=c.upcast_attention,
            norm_num_groups=c.norm_num_groups,
            norm_eps=c.norm_eps,
            act_fn=c.act_fn,
            flip_sin_to_cos=c.flip_sin_to_cos,
            freq_shift=c.freq_shift,
            downsample_padding=c.downsample_padding,
            mid_block_type=c.mid_block_type,
            mid_block_scale_factor=c.mid_block_scale_factor,
            resnet_time_scale_shift=c.resnet_time_scale_shift,
            addition_time_embed_dim=c.addition_time_embed_dim,
            projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
            conv_in_kernel=c.conv_in_kernel,
        )
        if copy_weights:
            adaptor.copy_from_unet(unet)
        return adaptor.requires_grad_(True)

    @torch.no_grad()
    def copy_from_unet(self, unet: UNet2DConditionModel) -> list[str]:
        """Copy every tensor whose name and shape match the prior (a trimmed stack gets the first
        blocks of the prior's stack); returns the names left at their own initialisation."""
        source = unet.state_dict()
        own = self.state_dict()
        left = []
        for name, tensor in own.items():
            if name in source and source[name].shape == tensor.shape:
                tensor.copy_(source[name])
            else:
                left.append(name)
        return left

    def embed(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
              added_cond_kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Time + text_time embedding, as UNet2DConditionModel computes it. -> (B, 4 * C0)"""
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device,
                                    dtype=torch.float32 if isinstance(timestep, float) else torch.int64)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        t_emb = self.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype)  # (B, C0)
        emb = self.time_embedding(t_emb)  # (B, 4 C0)
        text_embeds, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        time_embeds = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)  # (B, 6 * D_t)
        add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
        return emb + self.add_embedding(add_embeds)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict[str, Any], z_lq: torch.Tensor) -> list[torch.Tensor]:
        """sample: noisy latent (B, 4, h, w) as the UNet gets it; z_lq: E_dr latent (B, 4, h, w).

        Returns X_c: [conv_in output, every down-block resnet/attention output and downsampler
        output] (the UNet's skip list) + [mid block output]."""
        dtype = self.conv_in.weight.dtype
        sample, z_lq = sample.to(dtype), z_lq.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        emb = self.embed(sample, timestep, added_cond_kwargs)
        h = self.conv_in(sample) + self.lq_conv_in(z_lq)  # (B, C0, h, w)
        h, features = run_encoder(h, self.down_blocks, self.mid_block, emb, encoder_hidden_states)
        features.append(h)
        return features
