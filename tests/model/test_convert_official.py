"""The released SUPIR checkpoint layout (../shared/supir/official_v0_keys.tsv) -> our checkpoint.

The TSV is the oracle: every released name and shape. At SDXL size everything runs on the meta
device (names and shapes); at a narrow width (SDXL's structure: depths 1, 2, 10, mid 10, with
channels 32..128) a file with exactly the released names and random values goes through the
same mapping code, and every tensor must sit where the mapping says, value for value.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from catalog.config import ConfigError
from model.checkpoint import PARTS, read_meta
from model.config import SDXL_UNET, SDXL_VAE, ModelConfig
from model.convert_official import (KeyMap, _unet_layout, convert, convert_tensors, main, meta_parts,
                                    project_module_targets)
from tests.support import ROOT

# every tensor name and shape of the released SUPIR-v0Q/v0F files (SUPIR's own parts), as the
# official model definition builds them (copied from ../shared/supir/, where its README says how)
TSV = ROOT / "tests" / "data" / "official_v0_keys.tsv"

NARROW_UNET = {**SDXL_UNET, "block_out_channels": [32, 64, 128], "attention_head_dim": [1, 2, 4],
               "cross_attention_dim": 32, "addition_time_embed_dim": 8,
               "projection_class_embeddings_input_dim": 64}
NARROW_VAE = {**SDXL_VAE, "block_out_channels": [32, 64, 128, 128]}
NARROW_CFG = dict(preset="sdxl", sft_hidden_channels=16, cross_attn_head_dim=32)


def released() -> dict[str, tuple[int, ...]]:
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines()[1:]]
    return {k: tuple(int(x) for x in shape.split("x")) for k, shape in rows}


@pytest.fixture(scope="module")
def sdxl_parts():
    return meta_parts(ModelConfig(preset="sdxl"))


def test_released_names_and_shapes_map_one_to_one_at_sdxl_size(sdxl_parts):
    keys = released()
    assert len(keys) == 1036 and sum(torch.Size(s).numel() for s in keys.values()) == 1_332_339_984
    ours = {f"{n}.{k}": p.shape for n, m in sdxl_parts.items() for k, p in m.state_dict().items()}
    assert sum(torch.Size(s).numel() for s in ours.values()) == 1_332_339_984
    keymap = KeyMap(_unet_layout(sdxl_parts))
    mapped = {k: keymap(k) for k in keys}
    assert len(set(mapped.values())) == len(ours) == 1036 and set(mapped.values()) == set(ours)
    for k, target in mapped.items():
        want = tuple(ours[target])
        assert keys[k] == want or keys[k] == (*want, 1, 1), (k, target, keys[k], want)
    # the whole conversion on meta: strict load of every part, mask_LQ dropped, SDXL keys skipped
    extra = {"model.control_model.mask_LQ": (1,), "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
             "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3)}
    shapes = keys | extra
    convert_tensors(list(shapes), lambda k: torch.empty(shapes[k], device="meta"), sdxl_parts)
    # the paper's trimmed adaptor stays available under its own preset name
    trimmed = meta_parts(ModelConfig(preset="sdxl_trimmed"))["adaptor"]
    assert round(sum(p.numel() for p in trimmed.parameters()) / 1e6, 1) == 597.8


# Hand-written from the sgm / ldm and diffusers module trees, independent of the rule tables.
SPOT = {
    "model.control_model.input_blocks.0.0.weight": "adaptor.conv_in.weight",
    "model.control_model.input_hint_block.0.weight": "adaptor.lq_conv_in.weight",
    "model.control_model.label_emb.0.2.bias": "adaptor.add_embedding.linear_2.bias",
    "model.control_model.time_embed.0.weight": "adaptor.time_embedding.linear_1.weight",
    "model.control_model.input_blocks.2.0.emb_layers.1.weight": "adaptor.down_blocks.0.resnets.1.time_emb_proj.weight",
    "model.control_model.input_blocks.3.0.op.weight": "adaptor.down_blocks.0.downsamplers.0.conv.weight",
    "model.control_model.input_blocks.4.0.skip_connection.weight": "adaptor.down_blocks.1.resnets.0.conv_shortcut.weight",
    "model.control_model.input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight":
        "adaptor.down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight",
    "model.control_model.input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight":
        "adaptor.down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj.weight",
    "model.control_model.middle_block.1.transformer_blocks.9.norm3.bias":
        "adaptor.mid_block.attentions.0.transformer_blocks.9.norm3.bias",
    "model.control_model.middle_block.2.out_layers.3.weight": "adaptor.mid_block.resnets.1.conv2.weight",
    "model.diffusion_model.project_modules.0.zero_conv.weight": "connectors.sft.0.zero_conv.weight",
    "model.diffusion_model.project_modules.2.param_free_norm.weight": "connectors.sft.2.norm.weight",
    "model.diffusion_model.project_modules.3.attn.to_q.weight": "connectors.cross_attn.1.attn.to_q.weight",
    "model.diffusion_model.project_modules.4.mlp_shared.0.weight": "connectors.sft.3.mlp_shared.0.weight",
    "model.diffusion_model.project_modules.7.norm2.weight": "connectors.cross_attn.0.norm2.weight",
    "model.diffusion_model.project_modules.10.zero_add.bias": "connectors.sft.8.zero_add.bias",
    "model.diffusion_model.project_modules.11.zero_mul.weight": "connectors.sft_mid.zero_mul.weight",
    "first_stage_model.denoise_encoder.down.1.block.0.nin_shortcut.weight":
        "encoder.encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    "first_stage_model.denoise_encoder.down.2.downsample.conv.bias": "encoder.encoder.down_blocks.2.downsamplers.0.conv.bias",
    "first_stage_model.denoise_encoder.mid.attn_1.proj_out.weight": "encoder.encoder.mid_block.attentions.0.to_out.0.weight",
    "first_stage_model.denoise_encoder.mid.block_2.norm1.weight": "encoder.encoder.mid_block.resnets.1.norm1.weight",
    "first_stage_model.denoise_encoder.norm_out.bias": "encoder.encoder.conv_norm_out.bias",
    "first_stage_model.quant_conv.weight": "encoder.quant_conv.weight",
}


def test_spot_checked_names_and_connector_order(sdxl_parts):
    keymap = KeyMap(_unet_layout(sdxl_parts))
    assert {k: keymap(k) for k in SPOT} == SPOT
    assert keymap("model.control_model.mask_LQ") is None
    # the released list: ZeroCrossAttn inserted at 3 (query 640) and 7 (query 1280)
    assert project_module_targets(SDXL_UNET)[3] == "cross_attn.1" and project_module_targets(SDXL_UNET)[7] == "cross_attn.0"


def test_adaptor_and_encoder_names_agree_with_diffusers_own_ldm_converters():
    """Oracle: diffusers' single-file converters (sgm UNet -> UNet2DConditionModel, ldm VAE ->
    AutoencoderKL) rename the adaptor's (a UNet encoder's) and E_dr's (a VAE encoder's) keys
    exactly as our rule tables do. Each tensor carries its own index, so the test follows it."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    keymap = KeyMap(SDXL_UNET)
    keys = list(released())
    for prefix, as_ldm, convert_fn, config, ours in (
            ("model.control_model.", lambda k: "model.diffusion_model." + k[len("model.control_model."):],
             convert_ldm_unet_checkpoint, SDXL_UNET, "adaptor."),
            ("first_stage_model.", lambda k: k.replace("denoise_encoder", "encoder"),
             convert_ldm_vae_checkpoint, SDXL_VAE, "encoder.")):
        ldm = [k for k in keys if k.startswith(prefix) and "input_hint_block" not in k]  # the hint conv is SUPIR's
        out = convert_fn({as_ldm(k): torch.tensor([float(i)]) for i, k in enumerate(ldm)}, dict(config))
        theirs = {int(v.flatten()[0]): ours + k for k, v in out.items()}
        assert len(theirs) == len(ldm) and all(theirs[i] == keymap(k) for i, k in enumerate(ldm))


def narrow_file(tmp_path, drop=(), add=None, suffix=".safetensors", wrap=False):
    """Random tensors under exactly the released names, shaped for the narrow parts."""
    parts = meta_parts(ModelConfig(**NARROW_CFG), NARROW_UNET, NARROW_VAE)
    keymap = KeyMap(_unet_layout(parts))
    ours = {f"{n}.{k}": p.shape for n, m in parts.items() for k, p in m.state_dict().items()}
    released_shape = released()
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for k in released_shape:
        shape = tuple(ours[keymap(k)])
        if len(released_shape[k]) == 4 and len(shape) == 2:  # stored as a 1x1 conv, as released
            shape = (*shape, 1, 1)
        tensors[k] = torch.randn(shape, generator=g)
    tensors["model.control_model.mask_LQ"] = torch.ones(1)
    tensors["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # a frozen SDXL key: skipped
    for k in drop:
        del tensors[k]
    tensors.update(add or {})
    path = tmp_path / f"supir{suffix}"
    if suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save({"state_dict": tensors} if wrap else tensors, str(path))
    return path, tensors, keymap


@pytest.mark.parametrize("suffix,wrap", [(".safetensors", False), (".ckpt", True)])
def test_narrow_file_converts_and_every_tensor_sits_where_the_mapping_says(tmp_path, suffix, wrap):
    path, tensors, keymap = narrow_file(tmp_path, suffix=suffix, wrap=wrap)
    parts = meta_parts(ModelConfig(**NARROW_CFG), NARROW_UNET, NARROW_VAE)
    folder = convert(path, tmp_path / "ckpt", sdxl="sd_xl_base_1.0_0.9vae.safetensors", parts=parts)
    meta = read_meta(folder)
    assert meta["prior"]["source"] == "sd_xl_base_1.0_0.9vae.safetensors" and meta["extra"]["tensors"] == 1036
    loaded = {}
    for name, cls in PARTS.items():  # load back from the written folder
        module = cls.from_pretrained(folder / name, use_safetensors=True)
        loaded.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    assert len(loaded) == 1036
    for k, v in tensors.items():
        target = keymap(k) if k.startswith(("model.control_model", "model.diffusion_model.project",
                                            "first_stage_model")) else None
        if target is None:
            continue
        assert torch.equal(loaded[target], v.reshape(loaded[target].shape)), k
    # a spot check by hand-written name: the mid attention's 1x1 conv is now a Linear
    q = tensors["first_stage_model.denoise_encoder.mid.attn_1.q.weight"]
    assert torch.equal(loaded["encoder.encoder.mid_block.attentions.0.to_q.weight"], q[:, :, 0, 0])


def test_missing_and_extra_keys_fail_naming_them(tmp_path):
    gone = "model.control_model.input_blocks.8.1.transformer_blocks.9.attn1.to_q.weight"
    path, _, _ = narrow_file(tmp_path, drop=[gone])
    with pytest.raises(ConfigError, match=r"missing .*down_blocks\.2\.attentions\.1\.transformer_blocks\.9\.attn1\.to_q"):
        convert(path, tmp_path / "a", parts=meta_parts(ModelConfig(**NARROW_CFG), NARROW_UNET, NARROW_VAE))
    extra = "model.diffusion_model.project_modules.12.zero_conv.weight"
    path, _, _ = narrow_file(tmp_path, add={extra: torch.zeros(2)})
    with pytest.raises(ConfigError, match=r"unknown key.*project_modules\.12\.zero_conv"):
        convert(path, tmp_path / "b", parts=meta_parts(ModelConfig(**NARROW_CFG), NARROW_UNET, NARROW_VAE))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_refuses_a_missing_file_and_a_pickle_with_code_naming_them(tmp_path, capsys):
    assert main(["--supir", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err
    torch.save({"state_dict": {}, "callback": Path("x")}, tmp_path / "evil.ckpt")  # not a plain tensor dict
    assert main(["--supir", str(tmp_path / "evil.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "weights_only" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_register_in_mlflow_and_resolve_the_alias(tmp_path):
    from model.convert_official import register
    from catalog.registry import resolve_model_path

    path, _, _ = narrow_file(tmp_path)
    folder = convert(path, tmp_path / "ckpt", parts=meta_parts(ModelConfig(**NARROW_CFG), NARROW_UNET, NARROW_VAE))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert register(folder, "supir@official", tracking_uri=uri) == "models:/supir@official"
    local = resolve_model_path("models:/supir@official", uri)
    assert read_meta(local)["extra"]["tensors"] == 1036
    with pytest.raises(ConfigError, match="--register"):
        register(folder, "supir", tracking_uri=uri)
