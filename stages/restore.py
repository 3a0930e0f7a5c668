"""Restore stage: SUPIR restoration of LQ images into the `restorations` table (no Ray here).

    restorer = Restorer(RestoreConfig(model="checkpoints/supir-tiny"))
    out = restorer({"pair_id": ids, "lq": png_bytes, "caption": captions})   # numpy batch
    # out has the RESTORATIONS columns (catalog.schemas), one row per input row

One model per instance, on the GPU when there is one. Per image (DESIGN section 7):

1. decode; upscale by the row's ``scale`` (else ``upscale``), raise the short side to ``min_size``
   and round both sides to a multiple of 64 (SUPIR's preprocessing);
2. z_LQ = E_dr(x_LQ), x_stage1 = D(z_LQ), z_center = E(x_stage1) (tiled VAE for large images);
3. the restoration-guided sampler (model/sampler.py), in latent tiles for large images, with the
   prompt "<caption>, <positive prompt>" against the negative-quality prompt, noise seeded by
   (seed, pair_id);
4. decode, colour fix against x_stage1 (wavelet or AdaIN), resize to the requested size, PNG.

Every input row comes out with a status: ok, too_large (over ``max_pixels``, read from the
header before decoding), decode_error (bytes Pillow cannot read), error
(restoration failed; the message is in ``error``). One bad row never stops its batch.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from PIL import Image

from catalog import codec
from catalog.batches import numpy_batch
from catalog.config import check, digest, to_dict
from model.colorfix import COLOR_FIXES, color_fix
from model.devices import TORCH_DTYPES, resolve_device, resolve_dtype
from model.images import to_pil, to_tensor
from model.sampler import (Conditioning, GuidedDenoiser, SamplerConfig, join_prompt, sample, sampling_sigmas,
                           seeded_generator)
from model.tiling import TiledDenoiser, TilingConfig, tiled_apply

log = logging.getLogger(__name__)

RESTORE_COLUMNS = ("pair_id", "run_id", "method", "status", "error", "restored", "params", "seconds")


@dataclass
class RestoreConfig:
    """The `restore:` section of a run config (and the options of pipelines/restore.py)."""

    model: str = "checkpoints/supir"
    """A checkpoint folder written by model/checkpoint.py (supir.json + encoder/ adaptor/
    connectors/), or an MLflow model URI (models:/<name>@<alias>, runs:/<id>/<path>) of one."""

    prior: Optional[str] = None
    """Load the prior from here instead of the source recorded in the checkpoint (a local SDXL
    folder or file, e.g. on a cluster where the training machine's path does not exist)."""

    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""

    dtype: str = "auto"
    """Inference dtype of the whole model: auto (bfloat16 on a GPU that has it, else float16;
    float32 on CPU), float32, float16 or bfloat16."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Steps, churn, CFG, control scale, restoration guidance, prompts, seed."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    """Latent tiles for sampling and VAE tiles for large images."""

    color_fix: Literal["wavelet", "adain", "none"] = "wavelet"
    """Colour correction of the result against ``color_fix_reference``."""

    color_fix_reference: Literal["stage1", "lq"] = "stage1"
    """Whose low frequencies (wavelet) or channel statistics (adain) the result takes: SUPIR's
    x_stage1 = D(E_dr(x_LQ)), or the bicubic-upscaled LQ itself, for a prior VAE whose round trip
    shifts colours it did not see in training (issue 15: the demo's tiny VAE greys a magenta photo)."""

    max_pixels: int = 16_000_000
    """Largest input width*height, read from the header before decoding; larger rows get status
    too_large (a 48 KB PNG can claim 100 megapixels, and sampling cost grows with the area)."""

    clamp_stage1: Optional[bool] = None
    """Clamp x_stage1 = D(z_LQ) to [-1, 1] before it serves as the colour reference and as the
    input of z_center = E(x_stage1). null: the sampler preset's (paper true; released false: the
    released script uses the decode as it comes)."""

    min_size: int = 1024
    """The short side is raised to at least this many pixels before sampling (SUPIR: 1024)."""

    upscale: int = 1
    """Output size / input size, for rows without a ``scale`` column (the pairs table has one)."""

    use_captions: bool = True
    """Prepend each row's caption to the positive prompt (when the row has one)."""

    method: str = "supir"
    """The ``method`` column: names this restorer next to baselines in the metrics table."""

    run_id: str = ""
    """The ``run_id`` column; empty: a digest of this config (stable across resumed runs)."""

    progress: bool = True
    """A progress bar over the sampling steps of each image."""

    batch_size: int = 1
    """Rows per Ray batch (images are restored one by one: their sizes differ)."""

    actors: int = 1
    """Restoring actors (one model each)."""

    num_gpus_per_actor: float = 1.0
    """GPUs per actor when CUDA is present (ignored on a CPU-only cluster)."""

    def __post_init__(self) -> None:
        check(bool(str(self.model).strip()), "restore.model", self.model, "a checkpoint folder or models:/ URI")
        dev = self.device
        check(dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
              "restore.device", dev, "auto, cpu, cuda or cuda:N")
        check(self.dtype == "auto" or self.dtype in TORCH_DTYPES, "restore.dtype", self.dtype,
              "auto, float32, float16 or bfloat16")
        check(self.color_fix in COLOR_FIXES, "restore.color_fix", self.color_fix, "one of " + ", ".join(COLOR_FIXES))
        check(self.color_fix_reference in ("stage1", "lq"), "restore.color_fix_reference", self.color_fix_reference,
              "stage1 or lq")
        check(self.min_size >= 64 and self.min_size % 8 == 0, "restore.min_size", self.min_size,
              "a multiple of 8, >= 64")
        check(1 <= self.upscale <= 16, "restore.upscale", self.upscale, "an integer in [1, 16]")
        check(bool(self.method.strip()), "restore.method", self.method, "a non-empty name")
        check(self.batch_size >= 1, "restore.batch_size", self.batch_size, "an integer >= 1")
        check(self.max_pixels >= 1, "restore.max_pixels", self.max_pixels, "an integer >= 1")
        check(self.actors >= 1, "restore.actors", self.actors, "an integer >= 1")
        check(self.num_gpus_per_actor >= 0, "restore.num_gpus_per_actor", self.num_gpus_per_actor, "a number >= 0")
        released = self.sampler.preset == "released"  # the restore-side settings of the sampler preset
        if self.clamp_stage1 is None:
            self.clamp_stage1 = not released
        if self.tiling.tiled_sampling is None:
            self.tiling.tiled_sampling = not released
        if self.tiling.tiled_vae is None:
            self.tiling.tiled_vae = not released
        if self.tiling.vae_groupnorm is None:
            self.tiling.vae_groupnorm = "shared" if released else "per_tile"

    def params(self) -> dict[str, Any]:
        """What goes into the ``params`` column: everything that changes a restoration."""
        return {"model": self.model, "prior": self.prior, "sampler": to_dict(self.sampler),
                "tiling": to_dict(self.tiling), "color_fix": self.color_fix, "clamp_stage1": self.clamp_stage1,
                "color_fix_reference": self.color_fix_reference, "min_size": self.min_size,
                "upscale": self.upscale, "use_captions": self.use_captions}

    def resolved_run_id(self) -> str:
        return self.run_id or digest(self.params())[:16]


# ---------------------------------------------------------------------------------------------
# pre- and post-processing

def working_size(width: int, height: int, scale: int, min_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((target w, h), (sampling w, h)): target = input * scale; sampling = target with the short side
    raised to min_size, each side rounded to a multiple of 64 (at least 64)."""
    tw, th = width * scale, height * scale
    k = max(1.0, min_size / min(tw, th))
    sw, sh = (max(64, int(round(v * k / 64.0)) * 64) for v in (tw, th))
    return (tw, th), (sw, sh)


def decode_image(data: bytes, max_pixels: Optional[int] = None) -> codec.Decoded:
    """The project's one decoder (catalog/codec.py): EXIF orientation, 16-bit, alpha, pixel cap."""
    return codec.decode(data, max_pixels)


def encode_png(img: Image.Image) -> bytes:
    return codec.encode_png(img)


def resolve_model_path(uri: str, tracking_uri: Optional[str] = None) -> Path:
    """A local checkpoint folder for a folder path or an MLflow models:/ or runs:/ URI.

    ``models:/<name>@<alias>`` is a registered version by alias (pipelines/train.py registers
    each trained stage with one); ``models:/<name>@latest`` and ``models:/<name>/latest`` the
    newest version. The tracking (and registry) URI is ``tracking_uri``, else MLFLOW_TRACKING_URI,
    else MLflow's default."""
    if uri.startswith(("models:/", "runs:/")):
        import os

        import mlflow

        # explicit, as the docstring says: MlflowClient(None) would prefer a URI that an earlier
        # mlflow.set_tracking_uri() left in this process over the environment
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        source = _model_version_source(uri, tracking_uri) if uri.startswith("models:/") else uri
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri))
        found = [p.parent for p in sorted(local.rglob("supir.json"))]
        if not found:
            raise FileNotFoundError(f"{uri}: no supir.json in the downloaded artifacts")
        return found[0]
    return Path(uri)


def _model_version_source(uri: str, tracking_uri: Optional[str]) -> str:
    """The artifact source of a registered version, ``models:/<name>@<alias>``, ``models:/<name>/<version>``
    or ``.../latest``, looked up in the registry at ``tracking_uri`` (MLflow's own models:/ download
    reads aliases from the default registry only)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = uri[len("models:/"):]
    name, sep, which = ref.rpartition("@") if "@" in ref else ref.partition("/")
    if not sep:
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if which.lower() == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise FileNotFoundError(f"{uri}: registered model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version)).source
    if sep == "@":
        return client.get_model_version_by_alias(name, which).source
    if which.isdigit():
        return client.get_model_version(name, which).source
    return client.get_latest_versions(name, [which])[0].source  # a stage name


# ---------------------------------------------------------------------------------------------
# the restorer

class Restorer:
    """Loads a SUPIR checkpoint once; ``__call__`` restores a numpy batch into RESTORATIONS rows.

    ``timings=True`` adds a ``sampling_seconds`` column (the sampler loop alone) for reports; the
    lake's table has exactly the RESTORATIONS columns. ``model`` passes an already built
    SUPIRModel (tests, benchmarks) instead of loading ``cfg.model``.
    """

    def __init__(self, cfg: RestoreConfig, model: Any = None, timings: bool = False):
        from model.checkpoint import load_model

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if model is None:  # in a 16-bit inference dtype every weight is loaded once, in that dtype
            model = load_model(resolve_model_path(cfg.model), prior_source=cfg.prior, device=self.device,
                               dtype=self.dtype, prior_dtype=None if self.dtype == torch.float32 else self.dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if self.dtype == torch.float16 and getattr(self.model.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in float16 (its config says force_upcast): encode and decode in
            # float32, as diffusers' pipelines do; E_dr is a copy of the same encoder
            self.model.vae.to(torch.float32)
            self.model.encoder.to(torch.float32)
        self.sigmas = sampling_sigmas(cfg.sampler.num_steps)
        self.run_id = cfg.resolved_run_id()
        self.params = json.dumps(cfg.params(), sort_keys=True)
        self.last_info: dict[str, Any] = {}
        self.timings = timings

    # -- one image -----------------------------------------------------------------------------
    def _vae(self, fn, x: torch.Tensor, encoder: bool, module: torch.nn.Module) -> torch.Tensor:
        """``fn`` (an encoder or the decoder) on ``x``, in tiles when tiling is on; with shared
        GroupNorm statistics, ``module``'s GroupNorms normalise with the whole image's."""
        t = self.cfg.tiling
        if not t.tiled_vae:
            return fn(x)
        shared = module if t.vae_groupnorm == "shared" else None
        if encoder:
            return tiled_apply(fn, x, t.encoder_tile_size, t.encoder_tile_overlap, 1 / self.model.vae_scale_factor,
                               shared)
        return tiled_apply(fn, x, t.decoder_tile_size, t.decoder_tile_overlap, self.model.vae_scale_factor, shared)

    def _conditioning(self, caption: Optional[str], height: int, width: int) -> tuple[Conditioning, Conditioning]:
        s = self.cfg.sampler
        positive = join_prompt(caption, s.positive_prompt, s.prompt_separator)
        hidden, pooled = self.model.encode_prompt([positive, s.negative_prompt])  # (2, 77, D), (2, P)
        if s.size_conditioning:  # the released script: original = target = 1024 x 1024, crop (0, 0)
            height = width = s.size_conditioning
        added = self.model.added_cond_kwargs(pooled, height, width)
        pos = Conditioning(hidden[:1], {k: v[:1] for k, v in added.items()})
        neg = Conditioning(hidden[1:], {k: v[1:] for k, v in added.items()})
        return pos, neg

    def prepare(self, img: Image.Image, scale: Optional[int] = None
                ) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor]:
        """(output size, working size, x_LQ): the image resized bicubic to the working size, (1, 3, H, W)."""
        (tw, th), (sw, sh) = working_size(img.width, img.height, scale or self.cfg.upscale, self.cfg.min_size)
        x_lq = to_tensor(img.resize((sw, sh), Image.Resampling.BICUBIC)).to(self.device, self.dtype)
        return (tw, th), (sw, sh), x_lq

    @torch.inference_mode()
    def restore(self, img: Image.Image, key: str, caption: Optional[str] = None,
                scale: Optional[int] = None) -> Image.Image:
        """One RGB image -> its restoration at ``scale`` (default ``upscale``) times its size."""
        cfg, model = self.cfg, self.model
        (tw, th), (sw, sh), x_lq = self.prepare(img, scale)  # x_lq: (1, 3, H, W)

        z_lq = self._vae(model.encode_lq, x_lq, True, model.encoder).to(self.dtype)  # (1, 4, H/8, W/8)
        x_stage1 = self._vae(model.decode, z_lq, False, model.vae.decoder)  # (1, 3, H, W)
        x_stage1 = (x_stage1.clamp(-1, 1) if cfg.clamp_stage1 else x_stage1).to(self.dtype)
        z_center = self._vae(model.encode, x_stage1, True, model.vae.encoder).float()

        pos, neg = self._conditioning(caption if cfg.use_captions else None, sh, sw)
        denoiser = GuidedDenoiser(model, cfg.sampler, pos, neg, dtype=self.dtype)
        t = cfg.tiling
        if t.tiled_sampling and max(z_lq.shape[-2:]) > t.tile_size:
            denoiser = TiledDenoiser(denoiser, t.tile_size, t.tile_stride)
        generator = seeded_generator(cfg.sampler.seed, key)
        noise = torch.randn(z_lq.shape, generator=generator, dtype=torch.float32).to(self.device)
        t0 = time.perf_counter()
        z = sample(denoiser, noise, self.sigmas.to(self.device), cfg.sampler, z_lq=z_lq, z_center=z_center,
                   generator=generator, progress=cfg.progress)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        sampling_s = time.perf_counter() - t0

        out = self._vae(model.decode, z.to(self.dtype), False, model.vae.decoder).float()  # (1, 3, H, W)
        reference = x_lq if cfg.color_fix_reference == "lq" else x_stage1
        out = color_fix(out, reference.float(), cfg.color_fix)
        result = to_pil(out)
        if result.size != (tw, th):
            result = result.resize((tw, th), Image.Resampling.BICUBIC)
        self.last_info = {"sampling_seconds": sampling_s, "steps": cfg.sampler.num_steps,
                          "sampling_size": (sw, sh), "size": (tw, th)}
        return result

    # -- a batch -------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["pair_id"]]
        n = len(ids)
        captions = list(batch["caption"]) if "caption" in batch else [None] * n
        scales = list(batch["scale"]) if "scale" in batch else [None] * n
        hqs = list(batch["hq"]) if "hq" in batch else [None] * n
        cols: dict[str, list[Any]] = {"pair_id": ids, "run_id": [self.run_id] * n, "method": [self.cfg.method] * n,
                                      "status": ["error"] * n, "error": [None] * n, "restored": [None] * n,
                                      "params": [self.params] * n, "seconds": [0.0] * n,
                                      "sampling_seconds": [0.0] * n, "notes": [None] * n}
        for i, data in enumerate(batch["lq"]):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise codec.DecodeError("decode_error", "no image bytes")
                decoded = decode_image(bytes(data), self.cfg.max_pixels)
                img = decoded.image
                if decoded.notes:
                    cols["notes"][i] = "; ".join(decoded.notes)
                    log.info("restore %s: %s", ids[i], cols["notes"][i])
            except codec.DecodeError as e:  # truncated files, bombs, odd data: a row status
                cols["status"][i], cols["error"][i] = e.status, str(e)
                cols["seconds"][i] = time.perf_counter() - t0
                continue
            try:
                caption = captions[i] if isinstance(captions[i], str) else None
                scale = int(scales[i]) if scales[i] is not None and not _isnan(scales[i]) else None
                if hqs[i] is not None:  # a pair: restore to its HQ size (SUPIR-mode LQ is already at it)
                    scale = max(1, round(codec.header_size(bytes(hqs[i]))[0] / img.width))
                cols["restored"][i] = encode_png(self.restore(img, ids[i], caption, scale))
                cols["status"][i] = "ok"
                cols["sampling_seconds"][i] = self.last_info["sampling_seconds"]
            except Exception as e:  # noqa: BLE001 - out of memory and the like: recorded per row
                log.exception("restore %s failed", ids[i])
                cols["status"][i], cols["error"][i] = "error", f"{type(e).__name__}: {e}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            cols["seconds"][i] = time.perf_counter() - t0
        if not self.timings:  # the CLI's extras; the lake's table has neither column
            del cols["sampling_seconds"], cols["notes"]
        return numpy_batch(cols, {"seconds": np.float64, "sampling_seconds": np.float64})


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


