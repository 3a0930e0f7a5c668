"""Checkpoint I/O of the trainable parts: E_dr, adaptor, connectors (safetensors + config.json).

Layout of a saved folder (diffusers' ModelMixin.save_pretrained for each part):

    <folder>/supir.json                      format, ModelConfig, prior record
    <folder>/encoder/config.json + diffusion_pytorch_model.safetensors
    <folder>/adaptor/config.json + diffusion_pytorch_model.safetensors
    <folder>/connectors/config.json + diffusion_pytorch_model.safetensors

The prior is not saved; it is recorded by source (path or hub id; null for the seeded random
prior of the tiny demo), sha256 of its component configs, and sha256 of its weights (see
SDXLPrior.weights_sha256; skipped above ``hash_limit`` parameters unless asked). Loading reads
safetensors only (``use_safetensors=True``), never pickles, and round-trips bit for bit.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from catalog.config import ConfigError, from_dict, to_dict
from model.adaptor import GLVControl
from model.config import ModelConfig
from model.connectors import SUPIRConnectors
from model.encoder import DegradationRobustEncoder
from model.prior import SDXLPrior
from model.supir import SUPIRModel, make_prior

FORMAT = "supir-trainable-v1"
PARTS = {"encoder": DegradationRobustEncoder, "adaptor": GLVControl, "connectors": SUPIRConnectors}
HASH_LIMIT = 100_000_000  # parameters; above this the weights hash costs tens of seconds


def prior_record(prior: SDXLPrior, hash_weights: Optional[bool] = None) -> dict[str, Any]:
    """Where the prior came from and what it was: source, config sha256, weights sha256 (or null)."""
    n = sum(p.numel() for p in prior.parameters())
    if hash_weights is None:
        hash_weights = n <= HASH_LIMIT
    on_meta = any(p.is_meta for p in prior.parameters())
    return {
        "source": prior.source,
        "config_sha256": prior.config_sha256(),
        "weights_sha256": prior.weights_sha256() if hash_weights and not on_meta else None,
        "parameters": n,
    }


def save_trainable(model: SUPIRModel, folder: str | Path, hash_prior_weights: Optional[bool] = None,
                   extra: Optional[dict[str, Any]] = None) -> Path:
    """Write the trainable parts of ``model`` to ``folder`` (see the module doc for the layout)."""
    return save_parts(model.trainable_modules(), model.config, prior_record(model.prior, hash_prior_weights),
                      folder, extra)


def save_parts(parts: dict[str, torch.nn.Module], config: ModelConfig, prior: dict[str, Any], folder: str | Path,
               extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``parts`` (encoder, adaptor, connectors) and supir.json with ``prior`` (a
    :func:`prior_record`) to ``folder``; also what model/convert_official.py writes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        parts[name].save_pretrained(folder / name, safe_serialization=True)
    meta = {"format": FORMAT, "model": to_dict(config), "prior": prior}
    if extra:
        meta["extra"] = extra
    (folder / "supir.json").write_text(json.dumps(meta, indent=2))
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "supir.json"
    if not path.is_file():
        raise ConfigError(f"checkpoint = {str(folder)!r} is not allowed: no supir.json in it")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"checkpoint format = {meta.get('format')!r} is not allowed: expected {FORMAT!r}")
    return meta


def check_prior(prior: SDXLPrior, record: dict[str, Any], strict: bool = True) -> None:
    """Raise ConfigError if the prior's architecture differs from the recorded one; warn if its
    weights differ (an adaptor trained on another prior still loads, but is probably wrong)."""
    sha = prior.config_sha256()
    if record.get("config_sha256") and record["config_sha256"] != sha:
        msg = (f"prior config sha256 = {sha[:12]}... is not allowed: the checkpoint was trained on a prior with "
               f"config sha256 {record['config_sha256'][:12]}... (source {record.get('source')!r})")
        if strict:
            raise ConfigError(msg)
        warnings.warn(msg, stacklevel=2)
    if record.get("weights_sha256") and not any(p.is_meta for p in prior.parameters()):
        if prior.weights_sha256() != record["weights_sha256"]:
            warnings.warn(f"prior weights differ from those the checkpoint was trained on "
                          f"(source {record.get('source')!r})", stacklevel=2)


def load_trainable(model: SUPIRModel, folder: str | Path, strict_prior: bool = True,
                   dtype: torch.dtype = torch.float32) -> SUPIRModel:
    """Replace ``model``'s encoder, adaptor and connectors with those saved in ``folder``."""
    meta = read_meta(folder)
    check_prior(model.prior, meta["prior"], strict=strict_prior)
    device = model.unet.device
    for name, cls in PARTS.items():
        part = cls.from_pretrained(Path(folder) / name, use_safetensors=True, torch_dtype=dtype)
        setattr(model, name, part.to(device).requires_grad_(True))
    model._check_layout()
    return model


def load_model(folder: str | Path, prior: Optional[SDXLPrior] = None, prior_source: Optional[str] = None,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               prior_dtype: Optional[torch.dtype] = None) -> SUPIRModel:
    """A whole SUPIRModel from a checkpoint folder: the recorded ModelConfig, the prior from its
    recorded source (or ``prior_source``, or an already loaded ``prior``) in ``prior_dtype``
    (default: the recorded ``model.dtype``), the saved parts in ``dtype``. The parts are read
    straight from their files (no initialisation from the prior first): an SDXL-size model
    holds each weight once."""
    meta = read_meta(folder)
    cfg = from_dict(ModelConfig, meta["model"], prefix="model")
    if prior_source is not None:
        cfg.prior = prior_source
    if prior_dtype is not None:
        cfg.dtype = str(prior_dtype).removeprefix("torch.")
    if prior is None:
        prior = make_prior(cfg, device)
    check_prior(prior, meta["prior"])
    parts = {name: cls.from_pretrained(Path(folder) / name, use_safetensors=True, torch_dtype=dtype)
             .to(prior.unet.device).requires_grad_(True) for name, cls in PARTS.items()}
    model = SUPIRModel(prior, parts["encoder"], parts["adaptor"], parts["connectors"], config=cfg)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
