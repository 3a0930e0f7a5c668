"""Prior loading from a folder and a single file; bit-exact save/load of the trainable parts."""
import json

import pytest
import torch
from safetensors import safe_open

from catalog.config import ConfigError
from model.checkpoint import load_model, load_trainable, save_trainable
from model.config import ModelConfig
from model.prior import SINGLE_FILE_FORMAT, save_prior, save_prior_single_file, write_config_folder
from model.supir import build_model


def _perturb(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ehs, pooled = model.encode_prompt(["a photo of a cat", "blurry, low quality"])
    f = model.vae_scale_factor
    sample = torch.randn(2, 4, 16, 24, generator=g)
    lq = torch.rand(2, 3, 16 * f, 24 * f, generator=g) * 2 - 1
    add = model.added_cond_kwargs(pooled, 16 * f, 24 * f)
    with torch.no_grad():
        z = model.encode_lq(lq)
        return (model(sample, torch.tensor([999, 250]), ehs, add, z, 1.0),
                model.prior_eps(sample, 500, ehs, add), model.decode(z))


@pytest.fixture(scope="module")
def trained():
    m = build_model(ModelConfig(preset="tiny"))
    _perturb(m)
    return m


def test_prior_folder_and_single_file_load_back_with_identical_outputs(trained, tmp_path):
    folder = save_prior(trained.prior, tmp_path / "prior")
    single = save_prior_single_file(trained.prior, tmp_path / "prior.safetensors")
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    with safe_open(str(single), framework="pt") as f:
        assert f.metadata()["format"] == SINGLE_FILE_FORMAT
    expected = _run(trained)
    for source in (str(folder), str(single)):
        m = build_model(ModelConfig(preset="tiny", prior=source))
        assert m.prior.source == source
        assert m.prior.weights_sha256() == trained.prior.weights_sha256()
        for name in ("encoder", "adaptor", "connectors"):  # same trained parts on the loaded prior
            getattr(m, name).load_state_dict(getattr(trained, name).state_dict())
        for a, b in zip(_run(m), expected):
            assert torch.equal(a, b), source


def test_trainable_parts_round_trip_bit_exact(trained, tmp_path):
    folder = save_trainable(trained, tmp_path / "ckpt")
    meta = json.loads((folder / "supir.json").read_text())
    assert meta["prior"]["source"] is None and len(meta["prior"]["weights_sha256"]) == 64
    assert meta["model"]["preset"] == "tiny"
    for part in ("encoder", "adaptor", "connectors"):
        assert (folder / part / "diffusion_pytorch_model.safetensors").is_file()
        assert (folder / part / "config.json").is_file()
        assert not list((folder / part).glob("*.bin"))
    loaded = load_model(folder)  # rebuilds the seeded tiny prior from the recorded config
    a, b = trained.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    for x, y in zip(_run(trained), _run(loaded)):
        assert torch.equal(x, y)


def test_loading_onto_a_different_prior_is_refused(trained, tmp_path):
    folder = save_trainable(trained, tmp_path / "ckpt")
    other = build_model(ModelConfig(preset="tiny", adaptor_transformer_depth=(1, 1, 1)))
    other.unet.register_to_config(norm_eps=1e-6)  # a different architecture config
    with pytest.raises(ConfigError, match="prior config sha256"):
        load_trainable(other, folder)
    with pytest.raises(ConfigError, match="supir.json"):
        load_model(tmp_path / "nothing")


def test_config_folder_for_original_single_files_is_loadable(tmp_path):
    """The weightless SDXL config folder that from_single_file(config=...) reads offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = write_config_folder(tmp_path / "cfg", "sdxl")
    unet_cfg = UNet2DConditionModel.load_config(folder, subfolder="unet")
    assert unet_cfg["transformer_layers_per_block"] == [1, 2, 10]
    assert AutoencoderKL.load_config(folder, subfolder="vae")["scaling_factor"] == 0.13025
    assert CLIPTextConfig.from_pretrained(folder / "text_encoder_2").hidden_size == 1280
    assert CLIPTokenizer.from_pretrained(folder / "tokenizer_2").pad_token == "!"
