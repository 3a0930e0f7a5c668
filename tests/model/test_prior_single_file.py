"""The original single-file layout (sd_xl_base_1.0.safetensors) read through diffusers, offline.

There is no real SDXL file here, so the tiny prior is written in the original SGM key layout by
``to_original_layout`` below (the inverse of diffusers' own single-file converters), then loaded
by ``load_prior`` -> ``StableDiffusionXLPipeline.from_single_file(config=<local folder>)``.
"""
import re

import torch
from safetensors.torch import save_file

from model.config import ModelConfig
from model.prior import build_prior, load_prior
from model.supir import build_model


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _unet_key(k: str, layers: int) -> str:
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in fixed.items():
        if k.startswith(a + "."):
            return b + k[len(a):]
    m = re.match(r"(down_blocks|up_blocks|mid_block)\.?(\d*)\.?(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", k)
    kind, i, part, j, rest = m.groups()
    i, j = int(i or 0), int(j)
    if part == "resnets":
        sub, tail = rest.split(".", 1)
        rest = _RESNET[sub] + "." + tail
    if kind == "down_blocks":
        if part == "downsamplers":
            return f"input_blocks.{(layers + 1) * (i + 1)}.0.op.{rest.split('.', 1)[1]}"
        return f"input_blocks.{(layers + 1) * i + j + 1}.{0 if part == 'resnets' else 1}.{rest}"
    if kind == "mid_block":
        return f"middle_block.{2 * j if part == 'resnets' else 1}.{rest}"
    n = (layers + 1) * i
    if part == "upsamplers":  # after the resnet and (for cross-attention up blocks) the transformer
        return f"output_blocks.{n + layers}.2.{rest}"
    return f"output_blocks.{n + j}.{0 if part == 'resnets' else 1}.{rest}"


def _vae_key(k: str, n: int) -> str:
    k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    k = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m.group(1)) + 1}", k)
    k = k.replace("mid_block.attentions.0", "mid.attn_1").replace("group_norm", "norm")
    k = re.sub(r"to_([qkv])\.", r"\1.", k).replace("to_out.0", "proj_out")
    k = re.sub(r"down_blocks\.(\d)\.resnets", r"down.\1.block", k)
    k = re.sub(r"down_blocks\.(\d)\.downsamplers\.0", r"down.\1.downsample", k)
    k = re.sub(r"up_blocks\.(\d)\.resnets", lambda m: f"up.{n - 1 - int(m.group(1))}.block", k)
    return re.sub(r"up_blocks\.(\d)\.upsamplers\.0", lambda m: f"up.{n - 1 - int(m.group(1))}.upsample", k)


def to_original_layout(prior) -> dict[str, torch.Tensor]:
    """An SDXL prior as the tensors of an original (SGM) single file."""
    out = {}
    layers = prior.unet.config.layers_per_block
    for k, v in prior.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(k, layers)] = v
    n = len(prior.vae.config.block_out_channels)
    for k, v in prior.vae.state_dict().items():
        key = _vae_key(k, n)
        is_attn = "attn_1" in key and v.ndim == 2
        out["first_stage_model." + key] = v[:, :, None, None] if is_attn else v  # 1x1 convs in SGM
    for k, v in prior.text_encoder.state_dict().items():
        key = k if k.startswith("text_model.") else "text_model." + k
        out["conditioner.embedders.0.transformer." + key] = v
    pre = "conditioner.embedders.1.model."
    sd = prior.text_encoder_2.state_dict()
    out[pre + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out[pre + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out[pre + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out[pre + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out[pre + "text_projection"] = sd["text_projection.weight"].T.contiguous()
    for i in range(prior.text_encoder_2.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[dst + f"attn.in_proj_{p}"] = torch.cat([sd[src + f"self_attn.{x}_proj.{p}"] for x in "qkv"])
            out[dst + f"attn.out_proj.{p}"] = sd[src + f"self_attn.out_proj.{p}"]
            out[dst + f"ln_1.{p}"] = sd[src + f"layer_norm1.{p}"]
            out[dst + f"ln_2.{p}"] = sd[src + f"layer_norm2.{p}"]
            out[dst + f"mlp.c_fc.{p}"] = sd[src + f"mlp.fc1.{p}"]
            out[dst + f"mlp.c_proj.{p}"] = sd[src + f"mlp.fc2.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def test_original_layout_single_file_loads_identically(tmp_path):
    prior = build_prior("tiny", seed=7)
    path = tmp_path / "sd_xl_tiny.safetensors"
    save_file(to_original_layout(prior), str(path))
    loaded = load_prior(str(path), preset="tiny")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(prior, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k].reshape(a[k].shape)), f"{name}.{k}"
    # and through the whole model: same prompts, same eps
    m1 = build_model(ModelConfig(preset="tiny"), prior=prior)
    m2 = build_model(ModelConfig(preset="tiny"), prior=loaded)
    outs = []
    for m in (m1, m2):
        ehs, pooled = m.encode_prompt(["a photo of a cat"])
        with torch.no_grad():
            outs.append(m.prior_eps(torch.ones(1, 4, 8, 8), 300, ehs, m.added_cond_kwargs(pooled, 64, 64)))
    # same weights, same math; the loaded file may differ in memory layout (strides), which picks other
    # CPU kernels on some processors (AMD EPYC here): float32 round-off, not a different model
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
