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

Every input row comes out with a status: ok, decode_error (bytes Pillow cannot read), error
(restoration failed; the message is in ``error``). One bad row never stops its batch.
"""
from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from catalog.batches import numpy_batch
from catalog.config import check, digest, to_dict
from model.colorfix import COLOR_FIXES, color_fix
from model.devices import TORCH_DTYPES, resolve_device, resolve_dtype
from model.sampler import Conditioning, GuidedDenoiser, SamplerConfig, sample, sampling_sigmas, seeded_generator
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
        check(self.actors >= 1, "restore.actors", self.actors, "an integer >= 1")
        check(self.num_gpus_per_actor >= 0, "restore.num_gpus_per_actor", self.num_gpus_per_actor, "a number >= 0")

    def params(self) -> dict[str, Any]:
        """What goes into the ``params`` column: everything that changes a restoration."""
        return {"model": self.model, "prior": self.prior, "sampler": to_dict(self.sampler),
                "tiling": to_dict(self.tiling), "color_fix": self.color_fix,
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


def decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())  # (H, W, 3)
    return (arr.permute(2, 0, 1)[None] / 127.5 - 1.0).contiguous()


def to_image(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> RGB image (rounded, clipped)."""
    arr = ((x[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def resolve_model_path(uri: str, tracking_uri: Optional[str] = None) -> Path:
    """A local checkpoint folder for a folder path or an MLflow models:/ or runs:/ URI.

    ``models:/<name>@<alias>`` is a registered version by alias (pipelines/train.py registers
    each trained stage with one); ``models:/<name>@latest`` and ``models:/<name>/latest`` the
    newest version. The tracking (and registry) URI is ``tracking_uri``, else MLFLOW_TRACKING_URI,
    else MLflow's default."""
    if uri.startswith(("models:/", "runs:/")):
        import mlflow

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
        if model is None:
            model = load_model(resolve_model_path(cfg.model), prior_source=cfg.prior, device=self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.sigmas = sampling_sigmas(cfg.sampler.num_steps)
        self.run_id = cfg.resolved_run_id()
        self.params = json.dumps(cfg.params(), sort_keys=True)
        self.last_info: dict[str, Any] = {}
        self.timings = timings

    # -- one image -----------------------------------------------------------------------------
    def _vae(self, fn, x: torch.Tensor, encoder: bool) -> torch.Tensor:
        t = self.cfg.tiling
        if not t.tiled_vae:
            return fn(x)
        if encoder:
            return tiled_apply(fn, x, t.encoder_tile_size, t.encoder_tile_overlap, 1 / self.model.vae_scale_factor)
        return tiled_apply(fn, x, t.decoder_tile_size, t.decoder_tile_overlap, self.model.vae_scale_factor)

    def _conditioning(self, caption: Optional[str], height: int, width: int) -> tuple[Conditioning, Conditioning]:
        s = self.cfg.sampler
        positive = f"{caption.strip()}, {s.positive_prompt}" if caption and caption.strip() else s.positive_prompt
        hidden, pooled = self.model.encode_prompt([positive, s.negative_prompt])  # (2, 77, D), (2, P)
        added = self.model.added_cond_kwargs(pooled, height, width)
        pos = Conditioning(hidden[:1], {k: v[:1] for k, v in added.items()})
        neg = Conditioning(hidden[1:], {k: v[1:] for k, v in added.items()})
        return pos, neg

    @torch.inference_mode()
    def restore(self, img: Image.Image, key: str, caption: Optional[str] = None,
                scale: Optional[int] = None) -> Image.Image:
        """One RGB image -> its restoration at ``scale`` (default ``upscale``) times its size."""
        cfg, model = self.cfg, self.model
        (tw, th), (sw, sh) = working_size(img.width, img.height, scale or cfg.upscale, cfg.min_size)
        x_lq = to_tensor(img.resize((sw, sh), Image.Resampling.BICUBIC)).to(self.device, self.dtype)  # (1, 3, H, W)

        z_lq = self._vae(model.encode_lq, x_lq, encoder=True).to(self.dtype)  # (1, 4, H/8, W/8)
        x_stage1 = self._vae(model.decode, z_lq, encoder=False).clamp(-1, 1).to(self.dtype)  # (1, 3, H, W)
        z_center = self._vae(model.encode, x_stage1, encoder=True).float()

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

        out = self._vae(model.decode, z.to(self.dtype), encoder=False).float()  # (1, 3, H, W)
        reference = x_lq if cfg.color_fix_reference == "lq" else x_stage1
        out = color_fix(out, reference.float(), cfg.color_fix)
        result = to_image(out)
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
                                      "sampling_seconds": [0.0] * n}
        for i, data in enumerate(batch["lq"]):
            t0 = time.perf_counter()
            try:
                if data is None:
                    raise ValueError("no image bytes")
                img = decode_image(bytes(data))
            except UnidentifiedImageError:
                cols["status"][i], cols["error"][i] = "decode_error", "not an image format Pillow reads"
                cols["seconds"][i] = time.perf_counter() - t0
                continue
            except Exception as e:  # noqa: BLE001 - truncated files, bombs, odd modes: a row status
                cols["status"][i], cols["error"][i] = "decode_error", f"{type(e).__name__}: {e}"
                cols["seconds"][i] = time.perf_counter() - t0
                continue
            try:
                caption = captions[i] if isinstance(captions[i], str) else None
                scale = int(scales[i]) if scales[i] is not None and not _isnan(scales[i]) else None
                if hqs[i] is not None:  # a pair: restore to its HQ size (SUPIR-mode LQ is already at it)
                    scale = max(1, round(Image.open(io.BytesIO(bytes(hqs[i]))).width / img.width))
                cols["restored"][i] = encode_png(self.restore(img, ids[i], caption, scale))
                cols["status"][i] = "ok"
                cols["sampling_seconds"][i] = self.last_info["sampling_seconds"]
            except Exception as e:  # noqa: BLE001 - out of memory and the like: recorded per row
                log.exception("restore %s failed", ids[i])
                cols["status"][i], cols["error"][i] = "error", f"{type(e).__name__}: {e}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            cols["seconds"][i] = time.perf_counter() - t0
        if not self.timings:
            del cols["sampling_seconds"]
        return numpy_batch(cols, {"seconds": np.float64, "sampling_seconds": np.float64})


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


