"""The frozen generative prior: SDXL's UNet, VAE, two CLIP text encoders and their tokenizers.

Loaded with diffusers / transformers from one of

- a local diffusers folder (``unet/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/``,
  what :func:`save_prior` and ``StableDiffusionXLPipeline.save_pretrained`` write),
- a hub id such as ``stabilityai/stable-diffusion-xl-base-1.0`` (same layout, downloaded),
- a single ``.safetensors`` file, either
  * the original SGM layout of ``sd_xl_base_1.0.safetensors`` (``model.diffusion_model.*``,
    ``first_stage_model.*``, ``conditioner.embedders.*``): read by diffusers'
    ``StableDiffusionXLPipeline.from_single_file`` with ``config=`` a local folder of SDXL configs
    written from model/config.py (so no hub access is needed), or
  * this project's prior file (:func:`save_prior_single_file`): diffusers / transformers key
    names behind a component prefix (``unet.``, ``vae.``, ``text_encoder.``, ``text_encoder_2.``),
    with the four component configs as JSON in the safetensors header (``supir_prior_configs``),
- nothing (``prior: null``): the preset's architecture with seeded random weights.

The prior is always frozen explicitly (``requires_grad_(False)``, eval mode).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from catalog.config import ConfigError
from model.config import architecture
from model.sampler import Conditioning
from model.tokenizer import clip_tokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
SINGLE_FILE_FORMAT = "supir-prior-v1"
# Keys that say nothing about the architecture (versions, paths, dtype) are left out of digests.
_VOLATILE = {"transformers_version", "_diffusers_version", "_name_or_path", "torch_dtype", "dtype",
             "architectures", "_class_name", "_use_default_values", "output_hidden_states",
             "return_dict", "use_return_dict", "_attn_implementation_autoset", "_commit_hash"}


class SDXLPrior(nn.Module):
    """SDXL base: ``unet``, ``vae``, ``text_encoder`` (CLIP ViT-L), ``text_encoder_2`` (OpenCLIP bigG,
    with projection) and the two tokenizers. ``source`` records where the weights came from."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                 text_encoder_2: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer,
                 tokenizer_2: CLIPTokenizer, source: Optional[str] = None):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.source = source
        self.freeze()

    def freeze(self) -> "SDXLPrior":
        """The prior is never trained by SUPIR: no gradients, eval mode (no dropout)."""
        self.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "SDXLPrior":  # the prior stays in eval mode
        return super().train(False)

    def component_configs(self) -> dict[str, dict[str, Any]]:
        """The four architecture configs as plain dicts (the single-file header, the digest)."""
        out = {}
        for name in COMPONENTS:
            module = getattr(self, name)
            cfg = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
            out[name] = {k: v for k, v in cfg.items() if k not in _VOLATILE and not k.startswith("_")}
        return json.loads(json.dumps(out, default=list))

    def config_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.component_configs(), sort_keys=True).encode()).hexdigest()

    def weights_sha256(self) -> str:
        """sha256 over every tensor (name, dtype, shape, bytes) in a fixed order.

        Reads every weight once (about 7 GB and tens of seconds for SDXL)."""
        h = hashlib.sha256()
        for name in COMPONENTS:
            for key, t in sorted(getattr(self, name).state_dict().items()):
                h.update(f"{name}.{key}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # -- what every user of the prior needs: text and size conditioning, E, D, the plain eps ---------
    def prior_eps(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                  encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The plain SDXL UNet (diffusers' own forward): eps of the prior alone."""
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]

    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL text conditioning: (encoder_hidden_states (B, 77, D1 + D2), pooled (B, P)).

        The penultimate hidden states of both encoders, concatenated; pooled = text encoder 2's
        projected embedding. (SDXL pipelines zero the negative prompt when it is empty; callers
        that want that pass zeros themselves.)"""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        device = self.unet.device
        hidden = []
        pooled = None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # (B, 77, D_i)
            pooled = getattr(out, "text_embeds", None)
        return torch.cat(hidden, dim=-1).to(self.unet.dtype), pooled.to(self.unet.dtype)

    def time_ids(self, height: int, width: int, batch_size: int = 1,
                 original_size: Optional[tuple[int, int]] = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """SDXL's micro-conditioning (original_size + crop top-left + target_size), pixels -> (B, 6)."""
        original = original_size or (height, width)
        # float32 whatever the prior's dtype: bf16 cannot hold every pixel size (1365 -> 1368);
        # the UNet's sinusoidal projection computes in float32 anyway.
        ids = torch.tensor([[*original, *crops_coords_top_left, height, width]], dtype=torch.float32,
                           device=self.unet.device)
        return ids.repeat(batch_size, 1)

    def added_cond_kwargs(self, pooled: torch.Tensor, height: int, width: int, **time_kwargs) -> dict[str, torch.Tensor]:
        """{"text_embeds", "time_ids"} for images of height x width pixels."""
        return {"text_embeds": pooled, "time_ids": self.time_ids(height, width, pooled.shape[0], **time_kwargs)}

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = False) -> torch.Tensor:
        """The frozen VAE encoder E (HQ latents for training, z_center): scaled mean, or a sample."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        return ((z - shift) if shift is not None else z) * self.vae.config.scaling_factor

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (SDXL 8, tiny 4)."""
        return vae_scale_factor(self.vae)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The frozen decoder D: scaled latents (B, 4, h, w) -> images (B, 3, f h, f w), about [-1, 1]."""
        shift = getattr(self.vae.config, "shift_factor", None)
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        z = z + shift if shift is not None else z
        return self.vae.decode(z, return_dict=False)[0]


class PriorHelpers:
    """For modules that hold the frozen prior as ``self.prior`` (SUPIRModel, :class:`PriorModel`):
    the prior's conditioning, VAE and plain-UNet helpers as their own methods, written once."""

    prior: SDXLPrior

    def encode_prompt(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior.encode_prompt(prompts)

    def time_ids(self, height: int, width: int, batch_size: int = 1, **kwargs: Any) -> torch.Tensor:
        return self.prior.time_ids(height, width, batch_size, **kwargs)

    def added_cond_kwargs(self, pooled: torch.Tensor, height: int, width: int, **time_kwargs: Any
                          ) -> dict[str, torch.Tensor]:
        return self.prior.added_cond_kwargs(pooled, height, width, **time_kwargs)

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = False) -> torch.Tensor:
        return self.prior.encode(images, generator, sample)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.prior.decode(latents)

    def prior_eps(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                  encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.prior.prior_eps(sample, timestep, encoder_hidden_states, added_cond_kwargs)

    @property
    def vae_scale_factor(self) -> int:
        return self.prior.vae_scale_factor


class PriorModel(PriorHelpers, nn.Module):
    """The frozen prior alone as model/sampler.py's epsilon model, with the prior's helpers.

    ``model(sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq, conditioning_scale)``
    is the plain UNet (z_lq and the scale are ignored): it drives model/sampler.py's
    GuidedDenoiser for text-to-image and image-to-image without building the adaptor (stage 0's
    sample grids, the negatives stage's SDEdit)."""

    def __init__(self, prior: SDXLPrior):
        super().__init__()
        self.prior = prior

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.prior.unet

    @property
    def vae(self) -> AutoencoderKL:
        return self.prior.vae

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, z_lq=None, conditioning_scale=0.0):
        return self.prior_eps(sample, timestep, encoder_hidden_states, added_cond_kwargs)

    def conditioning(self, prompts: Sequence[str], height: int, width: int,
                     zero: Optional[Sequence[bool]] = None) -> Conditioning:
        """SDXL conditioning of ``prompts`` for height x width images; rows with ``zero`` set are
        all zeros (SDXL's unconditional embedding)."""
        hidden, pooled = self.encode_prompt(list(prompts))  # (B, 77, D), (B, P)
        if zero is not None:
            keep = torch.tensor([not z for z in zero], dtype=hidden.dtype, device=hidden.device)
            hidden, pooled = hidden * keep[:, None, None], pooled * keep[:, None]
        return Conditioning(hidden, self.added_cond_kwargs(pooled, height, width))


def vae_scale_factor(vae: Any) -> int:
    """Image pixels per latent pixel of an AutoencoderKL (or its config): 2 ** (levels - 1), as in
    diffusers' pipelines. SDXL: 8; the tiny preset: 4."""
    config = getattr(vae, "config", vae)
    channels = config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels
    return 2 ** (len(channels) - 1)


def latent_shape(vae: Any, batch: int, height: int, width: Optional[int] = None) -> tuple[int, int, int, int]:
    """Shape of the latents of ``batch`` images of height x width px (square when width is None):
    (B, latent_channels, height / f, width / f), f = :func:`vae_scale_factor`."""
    f = vae_scale_factor(vae)
    config = getattr(vae, "config", vae)
    channels = config["latent_channels"] if isinstance(config, dict) else config.latent_channels
    return (batch, channels, height // f, (height if width is None else width) // f)


# ---------------------------------------------------------------------------------------------
# building

def _text_encoders(configs: dict[str, dict[str, Any]]) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    te = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    return te, te2


def _tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    return clip_tokenizer(), clip_tokenizer("!")


def build_prior(preset: str = "tiny", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0) -> SDXLPrior:
    """The preset's architecture with random weights, seeded (global RNG state is left untouched).

    ``device="meta"`` allocates nothing (parameter counting at SDXL scale). The SDXL presets are
    built in a 16-bit ``dtype`` directly, so that they never exist in float32 (13 GB; their random
    values then differ from a float32 build's); ``tiny`` is built in float32 and cast, so that a
    tiny random prior has the same values in every dtype (a checkpoint trained on it in float32
    restores on a GPU in bf16)."""
    configs = architecture(preset)
    device = torch.device(device)
    rng = contextlib.nullcontext() if device.type == "meta" else torch.random.fork_rng(devices=[])
    build_dtype = torch.float32 if preset == "tiny" else dtype
    with rng, torch.device(device), _default_dtype(build_dtype):
        if device.type != "meta":
            torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        te, te2 = _text_encoders(configs)
    prior = SDXLPrior(unet, vae, te, te2, *_tokenizers(), source=None)
    return prior.to(dtype=dtype) if dtype != torch.float32 else prior


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def load_prior(source: str, preset: str = "sdxl", dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> SDXLPrior:
    """Load a prior from a diffusers folder, a hub id or a single .safetensors file (module doc).

    ``preset`` names the architecture assumed for an original-layout single file."""
    path = Path(source).expanduser()
    if path.is_dir():
        prior = _load_diffusers(str(path), dtype)
    elif source.endswith(".safetensors"):
        if not path.is_file():
            raise ConfigError(f"model.prior = {source!r} is not allowed: the file does not exist")
        prior = _load_single_file(path, preset, dtype)
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        prior = _load_diffusers(source, dtype)  # a hub id: diffusers' own cache and download rules
    else:
        raise ConfigError(f"model.prior = {source!r} is not allowed: expected an existing folder, "
                          "a .safetensors file or a hub id (owner/name)")
    prior.source = source
    return prior.to(device)


def _load_diffusers(source: str, dtype: torch.dtype) -> SDXLPrior:
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    te = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)
    te2 = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", torch_dtype=dtype)
    try:
        tok = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        tok2 = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2")
    except (OSError, ValueError, TypeError):  # a folder without tokenizers: CLIP's BPE, offline
        tok, tok2 = _tokenizers()
    return SDXLPrior(unet, vae, te, te2, tok, tok2)


def _load_single_file(path: Path, preset: str, dtype: torch.dtype) -> SDXLPrior:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
    if meta.get("format") == SINGLE_FILE_FORMAT:
        return _load_project_single_file(path, json.loads(meta["supir_prior_configs"]), dtype)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return _load_original_single_file(path, preset, dtype)
    raise ConfigError(f"model.prior = {str(path)!r} is not allowed: a .safetensors file in neither the "
                      f"original SDXL layout (model.diffusion_model.*) nor this project's {SINGLE_FILE_FORMAT}")


def _load_project_single_file(path: Path, configs: dict[str, dict[str, Any]], dtype: torch.dtype) -> SDXLPrior:
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    state = load_file(str(path))
    # Parameters on meta (nothing allocated twice), buffers real; then assign the file's tensors.
    with init_empty_weights(include_buffers=False):
        modules = {"unet": UNet2DConditionModel.from_config(configs["unet"]),
                   "vae": AutoencoderKL.from_config(configs["vae"])}
        modules["text_encoder"], modules["text_encoder_2"] = _text_encoders(configs)
    for name, module in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub, strict=True, assign=True)
        if module.dtype != dtype:
            module.to(dtype)
    return SDXLPrior(modules["unet"], modules["vae"], modules["text_encoder"], modules["text_encoder_2"],
                     *_tokenizers())


def _load_original_single_file(path: Path, preset: str, dtype: torch.dtype) -> SDXLPrior:
    """sd_xl_base_1.0.safetensors and fine-tunes in its layout, through diffusers' converters."""
    from diffusers import StableDiffusionXLPipeline

    with tempfile.TemporaryDirectory() as config_dir:
        write_config_folder(config_dir, preset)
        pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=config_dir, local_files_only=True,
                                                          torch_dtype=dtype)
    return SDXLPrior(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2)


# ---------------------------------------------------------------------------------------------
# saving

_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's training schedule: 1000 steps, scaled-linear betas 0.00085..0.012 (DESIGN 6)."""
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", prediction_type="epsilon",
                                  timestep_spacing="leading", steps_offset=1)


def _write_common(folder: Path, tokenizers: tuple[CLIPTokenizer, CLIPTokenizer]) -> None:
    (folder / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2))
    _sdxl_scheduler().save_pretrained(folder / "scheduler")
    tokenizers[0].save_pretrained(folder / "tokenizer")
    tokenizers[1].save_pretrained(folder / "tokenizer_2")


def save_prior(prior: SDXLPrior, folder: str | Path) -> Path:
    """A diffusers folder (what StableDiffusionXLPipeline.from_pretrained reads), safetensors weights."""
    folder = Path(folder)
    for name in COMPONENTS:
        getattr(prior, name).save_pretrained(folder / name, safe_serialization=True)
    _write_common(folder, (prior.tokenizer, prior.tokenizer_2))
    return folder


def save_prior_single_file(prior: SDXLPrior, path: str | Path) -> Path:
    """This project's single-file layout: ``<component>.<diffusers key>`` tensors, configs in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().contiguous().cpu()
               for name in COMPONENTS for k, v in getattr(prior, name).state_dict().items()}
    save_file(tensors, str(path), metadata={"format": SINGLE_FILE_FORMAT,
                                            "supir_prior_configs": json.dumps(prior.component_configs())})
    return path


def write_config_folder(folder: str | Path, preset: str) -> Path:
    """A weightless diffusers folder of the preset's configs (``config=`` for from_single_file)."""
    folder = Path(folder)
    configs = architecture(preset)
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps({"_class_name": cls.__name__, **configs[name]}, indent=2))
    for name, arch in (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")):
        CLIPTextConfig(**configs[name], architectures=[arch]).save_pretrained(folder / name)
    _write_common(folder, _tokenizers())
    return folder
