"""Import the released SUPIR-v0Q / SUPIR-v0F weights into this project's checkpoint folder.

    python -m model.convert_official --supir SUPIR-v0Q.ckpt \\
        --sdxl sd_xl_base_1.0_0.9vae.safetensors --out checkpoints/supir-v0Q [--register supir@official]

The released files hold SUPIR's trainable parts in the official (sgm) layout, often beside the
frozen SDXL weights. Only SUPIR's own prefixes are read (../shared/supir/README.md):

    model.control_model.*                      GLVControl, untrimmed      -> adaptor.*
    model.diffusion_model.project_modules.N.*  10 ZeroSFT + 2 ZeroCrossAttn -> connectors.*
    first_stage_model.denoise_encoder.*        E_dr                       -> encoder.encoder.*
    first_stage_model.quant_conv.*             E_dr's quant_conv          -> encoder.quant_conv.*

and renamed by the small rule tables below (sgm / ldm module names -> diffusers'). Every key
must map to exactly one of our parameters with the same shape (a 1x1 conv becomes the Linear
diffusers uses); ``model.control_model.mask_LQ`` (never read by the model) is dropped by name;
any other unknown, missing or mis-shaped key fails, naming the keys.

Tensors are streamed: ``safe_open`` for ``.safetensors``, ``torch.load(mmap=True,
weights_only=True)`` for a pickled ``.ckpt`` (its ``state_dict``), and assigned into parts built
on the meta device, so that a 5 GB file is held in memory once. The prior is not converted: the
checkpoint records ``--sdxl`` as its source (SDXL base 1.0; the released encoder was trained
against the 0.9 VAE, ``sd_xl_base_1.0_0.9vae.safetensors``), loaded when the checkpoint is.
"""
from __future__ import annotations

import argparse
import pickle
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from catalog.config import ConfigError
from model.config import ModelConfig, architecture
from model.connectors import connector_layout
from model.prior import build_prior
from model.supir import build_trainable

# official prefix -> our part (module path in SUPIRModel.trainable_modules())
PREFIXES = {
    "model.control_model.": "adaptor.",
    "model.diffusion_model.project_modules.": "connectors.",
    "first_stage_model.denoise_encoder.": "encoder.encoder.",
    "first_stage_model.quant_conv.": "encoder.quant_conv.",
}
DROPPED = ("model.control_model.mask_LQ",)  # in the released files, never read by the model

# sgm ResBlock -> diffusers ResnetBlock2D (inside the adaptor)
RESNET_RULES = [
    (r"\.in_layers\.0\.", ".norm1."),
    (r"\.in_layers\.2\.", ".conv1."),
    (r"\.emb_layers\.1\.", ".time_emb_proj."),
    (r"\.out_layers\.0\.", ".norm2."),
    (r"\.out_layers\.3\.", ".conv2."),
    (r"\.skip_connection\.", ".conv_shortcut."),
]
# GLVControl (sgm UNet encoder) -> GLVControl here (diffusers' down/mid blocks). input_blocks.I.J
# is computed from the UNet layout (see _input_block); transformer blocks keep their names.
ADAPTOR_RULES = [
    (r"^time_embed\.0\.", "time_embedding.linear_1."),
    (r"^time_embed\.2\.", "time_embedding.linear_2."),
    (r"^label_emb\.0\.0\.", "add_embedding.linear_1."),
    (r"^label_emb\.0\.2\.", "add_embedding.linear_2."),
    (r"^input_hint_block\.0\.", "lq_conv_in."),
    (r"^input_blocks\.0\.0\.", "conv_in."),
    (r"^middle_block\.0\.", "mid_block.resnets.0."),
    (r"^middle_block\.1\.", "mid_block.attentions.0."),
    (r"^middle_block\.2\.", "mid_block.resnets.1."),
]
# ldm VAE Encoder -> diffusers Encoder (E_dr); the mid attention's 1x1 convs become Linear
ENCODER_RULES = [
    (r"^down\.(\d+)\.block\.(\d+)\.", r"down_blocks.\1.resnets.\2."),
    (r"^down\.(\d+)\.downsample\.conv\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^mid\.block_1\.", "mid_block.resnets.0."),
    (r"^mid\.block_2\.", "mid_block.resnets.1."),
    (r"^mid\.attn_1\.norm\.", "mid_block.attentions.0.group_norm."),
    (r"^mid\.attn_1\.q\.", "mid_block.attentions.0.to_q."),
    (r"^mid\.attn_1\.k\.", "mid_block.attentions.0.to_k."),
    (r"^mid\.attn_1\.v\.", "mid_block.attentions.0.to_v."),
    (r"^mid\.attn_1\.proj_out\.", "mid_block.attentions.0.to_out.0."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
]
# official ZeroSFT / ZeroCrossAttn -> model/connectors.py (everything else keeps its name)
CONNECTOR_RULES = [(r"^param_free_norm\.", "norm.")]


def _apply(rules: list[tuple[str, str]], key: str) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _input_block(index: int, sub: int, layers_per_block: int) -> str:
    """sgm's flat ``input_blocks.I.J`` -> diffusers' ``down_blocks.L.{resnets,attentions,downsamplers}``.

    I = 1 + L * (layers + 1) + j: j < layers is resnet j (J = 0) and its transformer (J = 1);
    j = layers is the level's downsampler (its conv is ``op``)."""
    level, j = divmod(index - 1, layers_per_block + 1)
    if j == layers_per_block:
        return f"down_blocks.{level}.downsamplers.0"
    return f"down_blocks.{level}.{'resnets' if sub == 0 else 'attentions'}.{j}"


def project_module_targets(unet_config: dict[str, Any]) -> list[str]:
    """Our connector of each official ``project_modules`` index, in the official list's order: one
    ZeroSFT per skip (shallow first), a ZeroCrossAttn right before the ZeroSFT of the skip that is
    its context (the released code inserts them at 3 and 7), the mid block's ZeroSFT last."""
    layout = connector_layout(unet_config)
    attn_at = {k: i for i, (_, _, k) in enumerate(layout["cross_attn"])}
    targets = []
    for k in range(len(layout["skip_channels"])):
        if k in attn_at:
            targets.append(f"cross_attn.{attn_at[k]}")
        targets.append(f"sft.{k}")
    return targets + ["sft_mid"]


class KeyMap:
    """official key -> our key (``None`` for a dropped key), for one UNet layout."""

    def __init__(self, unet_config: dict[str, Any]):
        self.layers_per_block = int(unet_config["layers_per_block"])
        self.project_modules = project_module_targets(unet_config)

    def __call__(self, key: str) -> Optional[str]:
        if key in DROPPED:
            return None
        for prefix, part in PREFIXES.items():
            if key.startswith(prefix):
                return part + self._rename(part, key[len(prefix):], key)
        raise KeyError(key)

    def _rename(self, part: str, rest: str, key: str) -> str:
        if part == "adaptor.":
            m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", rest)
            if m and m.group(1) != "0":
                block = _input_block(int(m.group(1)), int(m.group(2)), self.layers_per_block)
                tail = "conv." + m.group(3)[len("op."):] if block.endswith("downsamplers.0") else m.group(3)
                rest = f"{block}.{tail}"
            return _apply(RESNET_RULES, "." + _apply(ADAPTOR_RULES, rest))[1:]
        if part == "connectors.":
            index, _, tail = rest.partition(".")
            if not index.isdigit() or int(index) >= len(self.project_modules):
                raise KeyError(key)
            return f"{self.project_modules[int(index)]}.{_apply(CONNECTOR_RULES, tail)}"
        if part == "encoder.encoder.":
            return _apply(ENCODER_RULES, rest)
        return rest  # quant_conv


# ---------------------------------------------------------------------------------------------
# reading

@contextmanager
def open_tensors(path: str | Path) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor]]]:
    """(keys, get(key)) of a ``.safetensors`` file (read lazily) or a pickled ``.ckpt``/``.pt``
    (memory-mapped, ``weights_only=True``; its ``state_dict`` entry when it has one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--supir = {str(path)!r} is not allowed: the file does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            yield list(f.keys()), f.get_tensor
        return
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # an old (non-zip) torch file cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # an object weights_only refuses: never unpickled here
        raise ConfigError(f"--supir = {str(path)!r} is not allowed: it holds objects other than tensors, which "
                          f"torch.load(weights_only=True) refuses ({str(e).splitlines()[0]}); convert it to "
                          ".safetensors where it came from") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"--supir = {str(path)!r} is not allowed: expected a state dict (or a dict with "
                          f"'state_dict'), got {type(obj).__name__}")
    yield list(state.keys()), state.__getitem__


def supir_keys(keys: list[str]) -> list[str]:
    """The keys SUPIR owns (the frozen SDXL parts a file may also hold are skipped)."""
    return [k for k in keys if k.startswith(tuple(PREFIXES)) or k in DROPPED]


# ---------------------------------------------------------------------------------------------
# converting

def meta_parts(cfg: ModelConfig, unet_config: Optional[dict] = None, vae_config: Optional[dict] = None
               ) -> dict[str, torch.nn.Module]:
    """encoder, adaptor, connectors of ``cfg`` on the meta device (nothing allocated), for the
    preset's SDXL architecture or the given UNet / VAE configs."""
    arch = architecture(cfg.preset)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**(unet_config or arch["unet"]))
        vae = AutoencoderKL(**(vae_config or arch["vae"]))
    encoder, adaptor, connectors = build_trainable(SimpleNamespace(unet=unet, vae=vae), cfg, copy_weights=False)
    return {"encoder": encoder, "adaptor": adaptor, "connectors": connectors}


def convert_tensors(keys: list[str], get: Callable[[str], torch.Tensor], parts: dict[str, torch.nn.Module],
                    dtype: Optional[torch.dtype] = None) -> dict[str, str]:
    """Assign the file's SUPIR tensors into ``parts`` (built on meta), strictly. Returns the
    mapping used, official key -> our key. Raises ConfigError naming the unknown and missing
    keys before any tensor is read, and a mis-shaped tensor when it is read."""
    keymap = KeyMap(_unet_layout(parts))
    targets = {f"{name}.{k}": p for name, module in parts.items() for k, p in module.state_dict().items()}
    mapping, unknown = {}, []
    for key in supir_keys(keys):
        try:
            ours = keymap(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is not None:
            if ours not in targets:
                unknown.append(key)
            else:
                mapping[key] = ours
    missing = sorted(set(targets) - set(mapping.values()))
    if unknown or missing:
        raise ConfigError("the file is not in the released SUPIR layout: "
                          + (f"{len(unknown)} unknown key(s) {sorted(unknown)[:8]}" if unknown else "")
                          + ("; " if unknown and missing else "")
                          + (f"{len(missing)} of our parameters missing in it {missing[:8]}" if missing else ""))
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in parts}
    for key, ours in mapping.items():
        t = get(key)
        want = targets[ours].shape
        if t.shape != want and t.shape == (*want, 1, 1):  # 1x1 conv -> Linear
            t = t.reshape(want)
        if t.shape != want:
            raise ConfigError(f"{key}: shape {tuple(t.shape)} is not allowed: {ours} has shape {tuple(want)}")
        part, _, name = ours.partition(".")
        states[part][name] = t.to(dtype) if dtype is not None else t
    for name, module in parts.items():
        module.load_state_dict(states[name], strict=True, assign=True)
    return mapping


def _unet_layout(parts: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """What KeyMap needs of the prior UNet, read from the parts themselves."""
    a, c = parts["adaptor"].config, parts["connectors"].config
    blocks = list(a.block_out_channels)
    return {"block_out_channels": blocks, "layers_per_block": a.layers_per_block,
            "norm_num_groups": c.norm_num_groups}


def convert(supir: str | Path, out: str | Path, sdxl: Optional[str] = None, preset: str = "sdxl",
            dtype: Optional[torch.dtype] = None, parts: Optional[dict[str, torch.nn.Module]] = None) -> Path:
    """Convert the released file ``supir`` into checkpoint folder ``out`` (model/checkpoint.py).

    ``sdxl`` is recorded as the prior's source (null: the preset's seeded random prior, for
    tests). ``dtype`` casts the weights (default: as stored). ``parts`` (on meta) replaces the
    preset's parts (tests at a narrow width)."""
    from model.checkpoint import save_parts

    cfg = ModelConfig(preset=preset, prior=sdxl)
    parts = parts if parts is not None else meta_parts(cfg)
    with open_tensors(supir) as (keys, get):
        mapping = convert_tensors(keys, get, parts, dtype)
        prior = build_prior(preset, device="meta")  # the architecture record; nothing allocated
        record = {"source": sdxl, "config_sha256": prior.config_sha256(), "weights_sha256": None,
                  "parameters": sum(p.numel() for p in prior.parameters())}
        extra = {"converted_from": str(supir), "tensors": len(mapping),
                 "parameters": sum(p.numel() for m in parts.values() for p in m.parameters())}
        return save_parts(parts, cfg, record, out, extra)


def register(folder: str | Path, name_alias: str, tracking_uri: str = "", lake: str = "lake",
             experiment: str = "supir") -> str:
    """Log ``folder`` as a run's ``model/`` artifacts and register it as ``name@alias``; returns
    the model URI (what ``pipelines/restore.py restore.model=...`` takes)."""
    from catalog.registry import publish
    from catalog.tracking import Tracker, TrackingConfig

    name, _, alias = name_alias.partition("@")
    if not name or not alias:
        raise ConfigError(f"--register = {name_alias!r} is not allowed: expected <name>@<alias>, e.g. supir@official")
    tracker = Tracker(TrackingConfig(uri=tracking_uri, experiment=experiment), lake)
    with tracker.stage("convert_official", params={"folder": str(folder), "model": name_alias}) as run:
        _, uri = publish(run, folder, name, [alias])
    return uri


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Convert a released SUPIR checkpoint into this project's format.")
    ap.add_argument("--supir", required=True, help="SUPIR-v0Q / SUPIR-v0F .ckpt or .safetensors")
    ap.add_argument("--sdxl", default=None,
                    help="SDXL base 1.0 prior to record: sd_xl_base_1.0_0.9vae.safetensors, a diffusers folder or "
                         "a hub id (omitted: the preset's random prior, for tests only)")
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--preset", default="sdxl", choices=["sdxl"], help="architecture of the released weights")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="cast the weights (default: as stored)")
    ap.add_argument("--register", default=None, metavar="NAME@ALIAS", help="also register it in MLflow")
    ap.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or the lake's)")
    ap.add_argument("--lake", default="lake", help="where the default MLflow store lives (lake/mlflow.db)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        folder = convert(args.supir, args.out, args.sdxl, args.preset,
                         getattr(torch, args.dtype) if args.dtype else None)
        print(f"wrote {folder}")
        if args.register:
            print(f"registered {register(folder, args.register, args.tracking_uri, args.lake)}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
