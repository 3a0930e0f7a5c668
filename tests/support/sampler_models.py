"""Small deterministic stand-ins for the SUPIR epsilon model, for sampler and tiling tests."""
from __future__ import annotations

import torch
from torch import nn

from model.sampler import Conditioning


class TinyEps(nn.Module):
    """eps(sample, t, text, z_lq, s) = sample + a small residual: two 3x3 convs over [sample, s * z_lq],
    a timestep embedding and a text bias. eps ~ the scaled input keeps trajectories bounded (the ideal
    eps for latents near 0). Seeded, float32, a few thousand parameters: deterministic and fast."""

    def __init__(self, seed: int = 0, channels: int = 4, text_dim: int = 8, hidden: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        self.t_proj = nn.Linear(2, hidden)
        self.c_proj = nn.Linear(text_dim, hidden)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.requires_grad_(False)

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq, conditioning_scale):
        z = torch.zeros_like(sample) if z_lq is None else z_lq
        h = self.conv1(torch.cat([sample, conditioning_scale * z], dim=1))  # (B, hidden, h, w)
        t = timestep.float()[:, None] / 100.0
        temb = self.t_proj(torch.cat([t.sin(), t.cos()], dim=1))  # (B, hidden)
        cemb = self.c_proj(encoder_hidden_states.mean(1))  # (B, hidden)
        return sample + 0.3 * torch.tanh(self.conv2(torch.nn.functional.silu(h + (temb + cemb)[:, :, None, None])))


def text(batch: int = 1, seed: int = 0, dim: int = 8) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(batch, 3, dim, generator=g), {"text_embeds": torch.randn(batch, 4, generator=g)})
