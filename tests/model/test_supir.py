"""SUPIR model (model/): tiny seeded SDXL-shaped model on CPU, SDXL sizes on the meta device."""
import warnings

import pytest
import torch

from catalog.config import ConfigError, from_dict
from model.config import ModelConfig
from model.connectors import connector_layout
from model.supir import build_model, parameter_counts


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(preset="tiny"))


def _inputs(model, h, w, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ehs, pooled = model.encode_prompt(["a photo of a cat", "a sharp photo of a house"][:batch])
    return {
        "sample": torch.randn(batch, 4, h, w, generator=g),
        "timestep": torch.tensor([17, 803][:batch]),
        "encoder_hidden_states": ehs,
        "added_cond_kwargs": model.added_cond_kwargs(pooled, model.vae_scale_factor * h, model.vae_scale_factor * w),
        "z_lq": torch.randn(batch, 4, h, w, generator=g),
    }


def _perturb_trainable(model, seed=1, std=0.05):
    """Move every trainable weight (zero convs included) away from its initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# -- identity at control scale 0 -----------------------------------------------------------

@pytest.mark.parametrize("hw", [(32, 32), (10, 14)])  # (10, 14): upsample sizes forced, as in diffusers
def test_scale_zero_equals_prior_unet_exactly(model, hw):
    x = _inputs(model, *hw)
    with torch.no_grad():
        ref = model.unet(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
                         added_cond_kwargs=x["added_cond_kwargs"]).sample
        out = model(**x, conditioning_scale=0.0)
    assert out.shape == ref.shape == x["sample"].shape
    assert torch.equal(out, ref)


def test_scale_zero_exact_with_trained_connectors_and_per_sample_scale():
    m = build_model(ModelConfig(preset="tiny"))
    _perturb_trainable(m)
    x = _inputs(m, 16, 24)
    with torch.no_grad():
        ref = m.prior_eps(x["sample"], x["timestep"], x["encoder_hidden_states"], x["added_cond_kwargs"])
        out0 = m(**x, conditioning_scale=0.0)
        mixed = m(**x, conditioning_scale=torch.tensor([0.0, 1.0]))
        out1 = m(**x, conditioning_scale=1.0)
    assert torch.equal(out0, ref)
    assert torch.equal(mixed[0], ref[0])
    assert torch.allclose(mixed[1], out1[1], atol=1e-5)
    assert not torch.allclose(out1, ref, atol=1e-3)


def test_nonzero_scale_uses_z_lq_once_zero_convs_are_perturbed(model):
    x = _inputs(model, 16, 16)
    z2 = x["z_lq"].flip(0)
    with torch.no_grad():
        # Untrained: the zero convs block X_c, so z_LQ has no effect at any scale ...
        a = model(**x, conditioning_scale=1.0)
        b = model(**{**x, "z_lq": z2}, conditioning_scale=1.0)
        assert torch.equal(a, b)
        m = build_model(ModelConfig(preset="tiny"))
        _perturb_trainable(m)
        a, b = m(**x, conditioning_scale=1.0), m(**{**x, "z_lq": z2}, conditioning_scale=1.0)
        half = m(**x, conditioning_scale=0.5)
    # ... trained, it steers the output, more with a larger scale.
    assert (a - b).abs().max() > 1e-3
    ref = m.prior_eps(x["sample"], x["timestep"], x["encoder_hidden_states"], x["added_cond_kwargs"])
    assert 0 < (half - ref).abs().mean() < (a - ref).abs().mean()


# -- initialisation ------------------------------------------------------------------------

def test_zero_initialised_convs_are_zero(model):
    zero = model.connectors.zero_init_parameters()
    # one ZeroSFT per decoder skip (3 levels x (layers_per_block + 1); SDXL 9) and on the mid block,
    # each (Z1, Zmul, Zadd) x (weight, bias); + 2 ZeroCrossAttn output projections x 2
    n_sft = 3 * (model.unet.config.layers_per_block + 1) + 1
    assert len(model.connectors.sft) == n_sft - 1  # the skips; the mid block has its own
    assert len(zero) == n_sft * 3 * 2 + 2 * 2
    assert all(torch.count_nonzero(p) == 0 for _, p in zero)
    assert torch.count_nonzero(model.adaptor.lq_conv_in.weight) == 0
    assert torch.count_nonzero(model.adaptor.lq_conv_in.bias) == 0
    # the rest is not zero (the SFT's shared conv, the attention's q/k/v)
    assert torch.count_nonzero(model.connectors.sft[0].mlp_shared[0].weight) > 0


def test_adaptor_and_encoder_start_as_copies_of_the_prior(model):
    unet, adaptor = model.unet, model.adaptor
    # trimmed (tiny default: (1, 1, 1) against the prior's (1, 1, 2)): the first block of each stack
    assert len(adaptor.down_blocks[2].attentions[0].transformer_blocks) == 1
    assert len(unet.down_blocks[2].attentions[0].transformer_blocks) == 2
    a = adaptor.down_blocks[2].attentions[0].transformer_blocks[0].state_dict()
    u = unet.down_blocks[2].attentions[0].transformer_blocks[0].state_dict()
    assert all(torch.equal(a[k], u[k]) for k in u)
    assert torch.equal(adaptor.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(adaptor.add_embedding.linear_1.weight, unet.add_embedding.linear_1.weight)
    # untrimmed: the adaptor's features are the UNet encoder's, exactly (z_LQ is gated by a zero conv)
    full = build_model(ModelConfig(preset="tiny", adaptor_transformer_depth=(1, 1, 2)), prior=model.prior)
    x = _inputs(model, 16, 16)
    captured = {}
    hook = unet.mid_block.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    with torch.no_grad():
        unet(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
             added_cond_kwargs=x["added_cond_kwargs"])
        feats = full.control(x["sample"], x["timestep"], x["encoder_hidden_states"], x["added_cond_kwargs"], x["z_lq"])
    hook.remove()
    assert torch.equal(feats[-1], captured["mid"])
    # E_dr = E at init: z_LQ equals the frozen encoder's scaled posterior mean
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode_lq(images), model.encode(images))
    assert model.encode_lq(images).shape == (1, 4, 16, 16)  # the tiny VAE downsamples 4x


# -- training: what gets gradients ---------------------------------------------------------

def test_gradients_reach_only_the_trainable_parts():
    m = build_model(ModelConfig(preset="tiny"))
    m.train()
    assert not m.prior.training and m.adaptor.training
    x = _inputs(m, 8, 8)
    f = m.vae_scale_factor
    x["z_lq"] = m.encode_lq(torch.rand(2, 3, 8 * f, 8 * f) * 2 - 1)
    m(**x, conditioning_scale=1.0).square().mean().backward()
    trainable = {id(p) for p in m.trainable_parameters()}
    assert len(trainable) == sum(1 for _ in m.encoder.parameters()) + sum(1 for _ in m.adaptor.parameters()) \
        + sum(1 for _ in m.connectors.parameters())
    for name, p in m.named_parameters():
        if name.startswith("prior."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert id(p) in trainable and p.grad is not None, name
    # at init the zero convs are where the signal enters: their gradients are non-zero
    # (and only there: behind them the adaptor's and E_dr's gradients are exactly zero at init)
    assert all(p.grad.abs().sum() > 0 for _, p in m.connectors.zero_init_parameters())
    assert m.adaptor.lq_conv_in.weight.grad.abs().sum() == 0


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        m = build_model(ModelConfig(preset="tiny", gradient_checkpointing=ckpt))
        _perturb_trainable(m)
        m(**_inputs(m, 8, 8), conditioning_scale=1.0).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.trainable_parameters(("adaptor", "connectors"))]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# -- sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,adaptor_m", [((1, 2, 10), 1243.4), ((1, 1, 4), 597.8)])
def test_sdxl_parameter_counts_on_meta(depth, adaptor_m):
    m = build_model(ModelConfig(preset="sdxl", adaptor_transformer_depth=depth), device="meta")
    n = {k: v / 1e6 for k, v in parameter_counts(m).items()}
    assert abs(n["unet"] - 2567.5) / 2567.5 < 0.005
    assert abs(n["adaptor"] - adaptor_m) / adaptor_m < 0.01
    assert abs(n["connectors"] - 54.8) / 54.8 < 0.02
    assert abs(n["encoder"] - 34.2) / 34.2 < 0.01
    assert m.unet.device.type == "meta"


def test_connector_layout_matches_released_supir():
    from model.config import SDXL_UNET

    layout = connector_layout(SDXL_UNET)
    # SUPIR_v0.LightGLVUNet 'XL-base': cond_output_channels, concat_channels, cross_attn_insert_idx
    assert layout["skip_channels"] + [layout["mid_channels"]] == [320] * 4 + [640] * 3 + [1280] * 3
    assert layout["concat_channels"] + [0] == [320] * 2 + [640] * 3 + [1280] * 4 + [0]
    assert layout["cross_attn"] == [(1280, 640, 6), (640, 320, 3)]


# -- conditioning helpers ------------------------------------------------------------------

def test_encode_prompt_and_time_ids(model):
    ehs, pooled = model.encode_prompt(["a cat", "a dog", "a cat"])
    assert ehs.shape == (3, 77, 96) and pooled.shape == (3, 64)
    assert torch.equal(ehs[0], ehs[2]) and not torch.equal(ehs[0], ehs[1])
    ids = model.time_ids(512, 768, batch_size=2)
    assert ids.tolist() == [[512, 768, 0, 0, 512, 768]] * 2


def test_tokenizer_matches_openai_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.simple_tokenizer import SimpleTokenizer
    from model.tokenizer import clip_tokenizer

    text = "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, 32k"
    tok, tok2 = clip_tokenizer(), clip_tokenizer("!")
    expected = [49406] + SimpleTokenizer().encode(text) + [49407]
    assert tok(text).input_ids == expected
    assert tok("wow!").input_ids == [49406] + SimpleTokenizer().encode("wow!") + [49407]
    # tokenizer_2 pads with "!" (id 0) like SDXL's; a "!" in the text then also maps to the
    # special token, as with the hub's tokenizer_2, so compare on text without one.
    padded = tok2(text, padding="max_length", max_length=77).input_ids
    assert padded[: len(expected)] == expected and padded[-1] == 0 and len(padded) == 77
    assert len(tok) == 49408 and tok.pad_token_id == 49407


# -- config errors -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    ({"preset": "huge"}, "model.preset"),
    ({"dtype": "float8"}, "model.dtype"),
    ({"adaptor_transformer_depth": (1, 0, 4)}, "model.adaptor_transformer_depth"),
    ({"control_scale": -1.0}, "model.control_scale"),
    ({"sft_hidden_channels": 0}, "model.sft_hidden_channels"),
    ({"prior": ""}, "model.prior"),
])
def test_bad_config_values_raise_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_config_errors_found_at_build_time(model):
    with pytest.raises(ConfigError, match=r"model.adaptor_transformer_depth.*3 entries"):
        build_model(ModelConfig(adaptor_transformer_depth=(1, 1)), prior=model.prior)
    with pytest.raises(ConfigError, match=r"at most the prior's depth"):
        build_model(ModelConfig(adaptor_transformer_depth=(1, 3, 1)), prior=model.prior)
    with pytest.raises(ConfigError, match="model.prior"):
        build_model(ModelConfig(prior="/no/such/folder/x.safetensors"))
    with pytest.raises(ConfigError, match="unknown key 'model.depth'"):
        from_dict(ModelConfig, {"depth": 3}, prefix="model")
    cfg = from_dict(ModelConfig, {"preset": "sdxl", "adaptor_transformer_depth": [1, 2, 10]}, prefix="model")
    assert cfg.adaptor_transformer_depth == (1, 2, 10)
