"""SUPIR: the frozen SDXL prior steered by E_dr, the adaptor and the connectors.

``eps = model(sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq, conditioning_scale)``
runs the prior UNet with a forward loop written out over diffusers' own submodules (conv_in,
time and added embeddings, down blocks, mid block, the up blocks' resnets / attentions /
upsamplers, conv_norm_out, conv_out), so that a ZeroSFT sits on every skip concatenation and
on the mid block output and a ZeroCrossAttn before each upsampler. With conditioning_scale 0
the result equals ``unet(...)`` bit for bit (tested). ``prior_eps`` is the plain UNet.

``sample`` is the noisy latent as the UNet gets it (for the EDM sampler of DESIGN section 7 that
is x / sqrt(sigma^2 + 1)); ``z_lq`` = ``encode_lq(lq_images)``. With the prior in bf16 and the
trainable parts in float32, run under ``torch.autocast``; or cast the whole model for inference.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.adaptor import GLVControl, run_encoder
from model.config import ModelConfig, torch_dtype
from model.connectors import Scale, SUPIRConnectors
from model.encoder import DegradationRobustEncoder
from model.prior import PriorHelpers, SDXLPrior, build_prior, load_prior


class SUPIRModel(PriorHelpers, nn.Module):
    """``prior`` (frozen SDXLPrior) + trainable ``encoder`` (E_dr), ``adaptor`` and ``connectors``."""

    def __init__(self, prior: SDXLPrior, encoder: DegradationRobustEncoder, adaptor: GLVControl,
                 connectors: SUPIRConnectors, config: Optional[ModelConfig] = None):
        super().__init__()
        self.config = config or ModelConfig()
        self.prior = prior.freeze()
        self.encoder = encoder
        self.adaptor = adaptor
        self.connectors = connectors
        self.gradient_checkpointing = False
        self._check_layout()

    # -- parts ---------------------------------------------------------------------------------
    @property
    def unet(self):
        return self.prior.unet

    @property
    def vae(self):
        return self.prior.vae

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The three parts SUPIR trains (stage 1: ``encoder``; stage 2: ``adaptor`` + ``connectors``)."""
        return {"encoder": self.encoder, "adaptor": self.adaptor, "connectors": self.connectors}

    def trainable_parameters(self, parts: Sequence[str] = ("encoder", "adaptor", "connectors")) -> list[nn.Parameter]:
        mods = self.trainable_modules()
        return [p for name in parts for p in mods[name].parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the adaptor's blocks and the decoder's (connector, resnet, attention) steps in backward."""
        self.gradient_checkpointing = True
        self.adaptor.enable_gradient_checkpointing()
        self.encoder.enable_gradient_checkpointing()

    def _check_layout(self) -> None:
        # The connectors must produce exactly the channels each decoder resnet expects.
        skips = self.connectors.config.skip_channels
        concat = self.connectors.config.concat_channels
        k = len(skips)
        for block in self.unet.up_blocks:
            for resnet in block.resnets:
                k -= 1
                if skips[k] + concat[k] != resnet.in_channels:
                    raise ValueError(f"connectors do not fit the UNet at skip {k}: {skips[k]} + {concat[k]} "
                                     f"!= {resnet.in_channels}")

    def _ckpt(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # -- denoiser ------------------------------------------------------------------------------
    def control(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor], z_lq: torch.Tensor) -> list[torch.Tensor]:
        """The adaptor's features X_c (skips in UNet order, then mid); reusable across scales."""
        return self.adaptor(sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict[str, torch.Tensor], z_lq: Optional[torch.Tensor] = None,
                conditioning_scale: Optional[Scale] = None,
                control: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """eps for noisy latent ``sample`` (B, 4, h, w) at ``timestep`` (scalar or (B,)).

        encoder_hidden_states (B, 77, D) and added_cond_kwargs {"text_embeds": (B, P), "time_ids":
        (B, 6)} as from :meth:`encode_prompt` / :meth:`time_ids`; z_lq (B, 4, h, w) from
        :meth:`encode_lq` (None: the plain prior, as :meth:`prior_eps`); conditioning_scale s: a
        float or a (B,) tensor (default: config). A precomputed ``control`` (from :meth:`control`)
        replaces z_lq."""
        s = self.config.control_scale if conditioning_scale is None else conditioning_scale
        if control is None:
            if z_lq is None:  # nothing to restore from: the plain prior (SDXL text-to-image)
                return self.prior_eps(sample, timestep, encoder_hidden_states, added_cond_kwargs)
            control = self.control(sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq)
        return self._unet_forward(sample, timestep, encoder_hidden_states, added_cond_kwargs, control, s)

    def _unet_forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, control, s) -> torch.Tensor:
        """UNet2DConditionModel.forward for SDXL-shaped configs, with the connectors in the decoder."""
        unet, conn = self.unet, self.connectors
        # Like diffusers: force upsampler output sizes when h, w are not multiples of 2**num_upsamplers.
        factor = 2 ** unet.num_upsamplers
        forward_upsample_size = any(d % factor != 0 for d in sample.shape[-2:])
        upsample_size = None

        # 1. time + added (text_time) embedding
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)  # (B, 4 C0)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs)
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                     added_cond_kwargs=added_cond_kwargs)

        # 2-4. conv_in, encoder, mid block (frozen, unchanged)
        h, skips = run_encoder(unet.conv_in(sample), unet.down_blocks, unet.mid_block, emb, context)  # (B, C, h', w')
        h = self._ckpt(conn.sft_mid, control[-1], h, None, s)  # mid: H = X_s'

        # 5. decoder: ZeroSFT replaces each torch.cat([X_f, X_s]); ZeroCrossAttn before upsamplers
        k = len(skips)
        n_up = 0
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[k - n - 1].shape[2:]
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                k -= 1
                h = self._ckpt(self._decoder_step, conn.sft[k], resnet, attentions[j] if attentions else None,
                               control[k], skips[k], h, emb, context, s)
            if block.upsamplers is not None:
                h = self._ckpt(conn.cross_attn[n_up], control[k], h, s)
                n_up += 1
                for upsampler in block.upsamplers:
                    h = upsampler(h, upsample_size)

        # 6. out
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)

    @staticmethod
    def _decoder_step(sft, resnet, attention, control, skip, h, emb, context, s):
        h = sft(control, skip, h, s)  # (B, Cf + Cs, h, w), in place of torch.cat([h, skip], dim=1)
        h = resnet(h, emb)
        if attention is not None:
            h = attention(h, encoder_hidden_states=context, return_dict=False)[0]
        return h

    # -- E_dr (the prior's own helpers come from PriorHelpers) -----------------------------------
    def encode_lq(self, images: torch.Tensor) -> torch.Tensor:
        """z_LQ = E_dr(x_LQ): images (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/f, W/f), f = vae_scale_factor."""
        return self.encoder.encode_lq(images.to(self.encoder.dtype))


def build_trainable(prior: SDXLPrior, cfg: ModelConfig, copy_weights: bool = True
                    ) -> tuple[DegradationRobustEncoder, GLVControl, SUPIRConnectors]:
    """E_dr, adaptor (initialised from the prior) and connectors, float32, on the prior's device."""
    device = prior.unet.device
    depth, mid = cfg.adaptor_depths(dict(prior.unet.config))
    meta = device.type == "meta"
    rng = contextlib.nullcontext() if meta else torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with rng, torch.device(device):
        if not meta:
            torch.manual_seed(cfg.seed + 1)  # connectors' non-zero convs; trimmed-away blocks
        encoder = DegradationRobustEncoder.from_vae(prior.vae) if copy_weights else _bare_encoder(prior)
        adaptor = GLVControl.from_unet(prior.unet, depth, mid, copy_weights=copy_weights)
        connectors = SUPIRConnectors.from_unet_config(prior.unet.config, cfg.sft_hidden(),
                                                      cfg.cross_attn_head_dim, cfg.zero_init_cross_attn)
    return encoder, adaptor, connectors


def _bare_encoder(prior: SDXLPrior) -> DegradationRobustEncoder:
    c = prior.vae.config
    return DegradationRobustEncoder(c.in_channels, c.latent_channels, tuple(c.down_block_types),
                                    tuple(c.block_out_channels), c.layers_per_block, c.act_fn,
                                    c.norm_num_groups, c.scaling_factor, getattr(c, "shift_factor", None),
                                    use_quant_conv=getattr(c, "use_quant_conv", True),
                                    mid_block_add_attention=getattr(c, "mid_block_add_attention", True))


def make_prior(cfg: ModelConfig, device: str | torch.device = "cpu") -> SDXLPrior:
    """The prior of ``cfg``: loaded from ``cfg.prior``, or the preset's architecture with seeded
    random weights (``prior: null``), in ``cfg.dtype``."""
    if cfg.prior is None:
        return build_prior(cfg.preset, device=device, dtype=torch_dtype(cfg.dtype), seed=cfg.seed)
    return load_prior(cfg.prior, cfg.preset, dtype=torch_dtype(cfg.dtype), device=device)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", prior: Optional[SDXLPrior] = None) -> SUPIRModel:
    """The model of ``cfg``: its prior (loaded from ``cfg.prior``, or random for ``prior: null``;
    or the ``prior`` given) with fresh trainable parts. ``device="meta"`` allocates nothing."""
    if prior is None:
        prior = make_prior(cfg, device)
    model = SUPIRModel(prior, *build_trainable(prior, cfg), config=cfg)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: SUPIRModel) -> dict[str, int]:
    """Parameters per part (works on the meta device)."""
    return {"unet": count_parameters(model.unet), "vae": count_parameters(model.vae),
            "text_encoder": count_parameters(model.prior.text_encoder),
            "text_encoder_2": count_parameters(model.prior.text_encoder_2),
            "encoder": count_parameters(model.encoder), "adaptor": count_parameters(model.adaptor),
            "connectors": count_parameters(model.connectors)}


__all__ = ["SUPIRModel", "build_model", "make_prior", "build_trainable", "parameter_counts"]
