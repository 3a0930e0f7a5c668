"""The connectors between the adaptor and the frozen UNet decoder: ZeroSFT and ZeroCrossAttn.

ZeroSFT (SUPIR section 3.1, Fig. 3; DESIGN section 5), on every decoder skip concatenation and on
the mid block output, with X_c the adaptor feature, X_s the UNet skip, X_f the decoder feature
and s the control scale:

    X_s' = X_s + Z1(X_c)                      Z1: zero-init 1x1 conv
    H    = concat(X_f, X_s')                  (mid block: H = X_s')
    A    = SiLU(Conv3x3(X_c))                 128 hidden channels
    gamma, beta = Zmul(A), Zadd(A)            zero-init 3x3 convs to channels(H)
    Y    = GroupNorm32(H) * (1 + gamma) + beta
    out  = s * Y + (1 - s) * concat(X_f, X_s)

ZeroCrossAttn (in the released model, not in the paper): two of them, before the decoder's two
upsamplers, x <- x + s * Attn(GN(x) as query, GN(X_c) as key/value). The released code has the
zero-initialisation of the attention output commented out; ``zero_init=True`` (the default here)
zeroes it, so that each ZeroCrossAttn starts as the identity, as its name says.

At s = 0 both reduce to the plain UNet bit for bit (s * finite + 1 * x == x in IEEE arithmetic).
At s = 1 an untrained model is NOT the prior: with Zmul = Zadd = 0, Y = GroupNorm32(H), the
normalised (affine-initialised) concatenation. This is SUPIR's design; training starts from it.
SDXL sizes: 10 ZeroSFT + 2 ZeroCrossAttn = 54.8M parameters.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from model.adaptor import zero_module

Scale = float | torch.Tensor


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (sgm's ``normalization``), for bf16 stability; 32 groups as
    in SDXL, or the UNet's own ``norm_num_groups`` (the tiny preset's 8)."""

    def __init__(self, channels: int, eps: float = 1e-5, groups: int = 32):
        super().__init__(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _per_sample(scale: Scale, like: torch.Tensor) -> Scale:
    """A python float stays a float; a (B,) tensor becomes (B, 1, 1, 1) in ``like``'s dtype."""
    if torch.is_tensor(scale):
        return scale.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return scale


class ZeroSFT(nn.Module):
    """Spatial feature transform of the skip (and decoder) features by the adaptor feature."""

    def __init__(self, control_channels: int, skip_channels: int, concat_channels: int = 0, hidden_channels: int = 128,
                 groups: int = 32):
        super().__init__()
        out_channels = skip_channels + concat_channels  # channels(H)
        self.zero_conv = zero_module(nn.Conv2d(control_channels, skip_channels, 1))  # Z1
        self.mlp_shared = nn.Sequential(nn.Conv2d(control_channels, hidden_channels, 3, padding=1), nn.SiLU())
        self.zero_mul = zero_module(nn.Conv2d(hidden_channels, out_channels, 3, padding=1))
        self.zero_add = zero_module(nn.Conv2d(hidden_channels, out_channels, 3, padding=1))
        self.norm = GroupNorm32(out_channels, groups=groups)

    def forward(self, control: torch.Tensor, skip: torch.Tensor, hidden: Optional[torch.Tensor] = None,
                conditioning_scale: Scale = 1.0) -> torch.Tensor:
        """control X_c (B, Cc, h, w), skip X_s (B, Cs, h, w), hidden X_f (B, Cf, h, w) or None (mid)
        -> (B, Cf + Cs, h, w), the tensor the UNet's resnet gets (concat order as in diffusers)."""
        raw = skip if hidden is None else torch.cat([hidden, skip], dim=1)  # concat(X_f, X_s)
        control = control.to(skip.dtype)
        h = skip + self.zero_conv(control)  # X_s'
        if hidden is not None:
            h = torch.cat([hidden, h], dim=1)  # H
        actv = self.mlp_shared(control)  # A: (B, 128, h, w)
        gamma, beta = self.zero_mul(actv), self.zero_add(actv)
        y = self.norm(h) * (1 + gamma) + beta
        s = _per_sample(conditioning_scale, raw)
        return y * s + raw * (1 - s)


class ZeroCrossAttn(nn.Module):
    """x <- x + s * Attn(query GN(x), key/value GN(X_c)); heads of ``head_dim`` channels."""

    def __init__(self, query_channels: int, context_channels: int, head_dim: int = 64, zero_init: bool = True,
                 groups: int = 32):
        super().__init__()
        heads = max(query_channels // head_dim, 1)
        self.norm1 = GroupNorm32(query_channels, groups=groups)
        self.norm2 = GroupNorm32(context_channels, groups=groups)
        self.attn = Attention(query_dim=query_channels, cross_attention_dim=context_channels, heads=heads,
                              dim_head=query_channels // heads, bias=False, out_bias=True)
        if zero_init:
            zero_module(self.attn.to_out[0])

    def forward(self, control: torch.Tensor, x: torch.Tensor, conditioning_scale: Scale = 1.0) -> torch.Tensor:
        """control X_c (B, Cc, h, w), x decoder feature (B, Cq, h, w) -> (B, Cq, h, w)."""
        b, c, hh, ww = x.shape
        q = self.norm1(x).flatten(2).transpose(1, 2)  # (B, h*w, Cq)
        kv = self.norm2(control.to(x.dtype)).flatten(2).transpose(1, 2)  # (B, h*w, Cc)
        out = self.attn(q, encoder_hidden_states=kv).transpose(1, 2).reshape(b, c, hh, ww)
        return x + out * _per_sample(conditioning_scale, x)


def connector_layout(unet_config: Any) -> dict[str, Any]:
    """Channels of each connector, from a UNet2DConditionModel config (SDXL-shaped UNets).

    skip_channels[k]: the k-th skip (conv_in, then each down resnet/attention and downsampler);
    the adaptor's X_c[k] has the same channels. concat_channels[k]: X_f where skip k is consumed.
    cross_attn: (query channels, context channels, skip index of the context) per upsampler.
    """
    get = unet_config.get if isinstance(unet_config, dict) else (lambda k: getattr(unet_config, k))
    blocks = list(get("block_out_channels"))
    layers = get("layers_per_block")
    n = len(blocks)
    skips = [blocks[0]]
    for i, ch in enumerate(blocks):
        skips += [ch] * layers + ([ch] if i < n - 1 else [])
    concat = [0] * len(skips)
    cross_attn = []
    k = len(skips)
    reversed_blocks = list(reversed(blocks))
    prev = reversed_blocks[0]  # the mid block keeps the last width
    for i, out in enumerate(reversed_blocks):
        for j in range(layers + 1):
            k -= 1
            concat[k] = prev if j == 0 else out
        if i < n - 1:  # this up block ends with an upsampler; its context is the last skip consumed
            cross_attn.append((out, skips[k], k))
        prev = out
    try:
        groups = get("norm_num_groups")
    except (AttributeError, KeyError):
        groups = None
    return {"skip_channels": skips, "concat_channels": concat, "mid_channels": blocks[-1], "cross_attn": cross_attn,
            "norm_num_groups": int(groups or 32)}


class SUPIRConnectors(ModelMixin, ConfigMixin):
    """All connectors of one UNet: ``sft[k]`` for skip k, ``sft_mid``, ``cross_attn[i]`` for up block i."""

    @register_to_config
    def __init__(
        self,
        skip_channels: Sequence[int] = (320,) * 4 + (640,) * 3 + (1280,) * 2,
        concat_channels: Sequence[int] = (320,) * 2 + (640,) * 3 + (1280,) * 4,
        mid_channels: int = 1280,
        cross_attn_channels: Sequence[Sequence[int]] = ((1280, 640, 6), (640, 320, 3)),
        hidden_channels: int = 128,
        head_dim: int = 64,
        zero_init_cross_attn: bool = True,
        norm_num_groups: int = 32,
    ):
        super().__init__()
        g = norm_num_groups
        self.sft = nn.ModuleList(ZeroSFT(c, c, f, hidden_channels, g) for c, f in zip(skip_channels, concat_channels))
        self.sft_mid = ZeroSFT(mid_channels, mid_channels, 0, hidden_channels, g)
        self.cross_attn = nn.ModuleList(ZeroCrossAttn(q, c, head_dim, zero_init_cross_attn, g)
                                        for q, c, _ in cross_attn_channels)

    @classmethod
    def from_unet_config(cls, unet_config: Any, hidden_channels: int = 128, head_dim: int = 64,
                         zero_init_cross_attn: bool = True) -> "SUPIRConnectors":
        layout = connector_layout(unet_config)
        return cls(skip_channels=tuple(layout["skip_channels"]), concat_channels=tuple(layout["concat_channels"]),
                   mid_channels=layout["mid_channels"], cross_attn_channels=tuple(tuple(x) for x in layout["cross_attn"]),
                   hidden_channels=hidden_channels, head_dim=head_dim, zero_init_cross_attn=zero_init_cross_attn,
                   norm_num_groups=layout["norm_num_groups"])

    def zero_init_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters that are zero at initialisation (Z1, Zmul, Zadd, and the attention outputs)."""
        names = ("zero_conv", "zero_mul", "zero_add") + (("to_out",) if self.config.zero_init_cross_attn else ())
        return [(n, p) for n, p in self.named_parameters() if any(f".{z}." in f".{n}" for z in names)]
