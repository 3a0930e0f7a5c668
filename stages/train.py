"""SUPIR training, the loop each worker runs (DESIGN section 6; no Ray here).

    stage "encoder" (stage 1): E_dr only.   L = || D(E_dr(x_LQ)) - D(E(x_GT)) ||^2
    stage "adaptor" (stage 2): adaptor + connectors, E_dr and the prior frozen.
        z_0 = E(x_GT) (a posterior sample, scaled), t ~ U{0..999}, eps ~ N(0, I),
        z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps   (SDXL's schedule: 1000 steps,
                                                          scaled-linear betas 0.00085..0.012)
        L = || eps_theta(z_t, t, caption, z_LQ = E_dr(x_LQ)) - eps ||^2
        the caption is replaced by the empty prompt with probability prompt_dropout (for CFG);
        negative-quality samples train with their caption, the negative prompt (paper 3.2).

The skeleton (STYLE item 11): :func:`setup_model`, :func:`setup_data`, :func:`load_checkpoint`,
:func:`report_and_checkpoint`, :func:`train_loop`. The caller provides a :class:`Session`
(rank, this worker's rows, the checkpoint to resume from, a report function): pipelines/train.py
backs it with Ray Train, :class:`LocalSession` with a folder (tests, benchmarks, one process).

Checkpoint folder (one per ``checkpoint_every`` steps, and the last step):
    model/            the trainable parts, model/checkpoint.py's safetensors layout
    optimizer.pt      AdamW state: tensors and numbers only (read with torch.load(weights_only=True))
    ema.safetensors   EMA of the trained parameters (when ema_decay is set)
    state.json        step (steps done), data position, stage, the TrainConfig, the MLflow run
Every random draw of step k is seeded by (seed, rank, k) (stages/train_data.py and
:func:`step_generator`), so a run resumed from step k continues exactly as if never stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from catalog.config import to_dict
from catalog.tracking import MetricLog
from model.config import ModelConfig
from model.images import to_pil
from stages import train_dist as dist_utils
from stages.train_config import STAGES, TRAINED_PARTS, TrainConfig, TrainSection
from stages.train_data import Batch, TrainExamples, generator

log = logging.getLogger(__name__)

__all__ = ["STAGES", "TRAINED_PARTS", "LocalSession", "Session", "StageObjective", "TrainConfig", "TrainSection",
           "load_checkpoint", "report_and_checkpoint", "setup_data", "setup_model", "train_loop", "training_step"]


# ---------------------------------------------------------------------------------------------
# the session: what the loop needs from whoever runs it

class Session(Protocol):
    rank: int
    world_size: int

    def rows(self) -> list[dict[str, Any]]: ...

    def checkpoint(self) -> contextlib.AbstractContextManager[Optional[str]]: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None: ...


class LocalSession:
    """One process: rows given, checkpoints as folders ``<root>/checkpoint_<step>`` (latest resumes)."""

    rank, world_size = 0, 1

    def __init__(self, rows: Sequence[dict[str, Any]], root: str | os.PathLike, keep: int = 2):
        self._rows = list(rows)
        self.root = Path(root)
        self.keep = keep
        self.reports: list[dict[str, Any]] = []

    def rows(self) -> list[dict[str, Any]]:
        return self._rows

    def latest(self) -> Optional[Path]:
        found = sorted(self.root.glob("checkpoint_*")) if self.root.is_dir() else []
        return found[-1] if found else None

    @contextlib.contextmanager
    def checkpoint(self) -> Iterator[Optional[str]]:
        latest = self.latest()
        yield None if latest is None else str(latest)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            dest = self.root / f"checkpoint_{int(metrics['step']):08d}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(checkpoint_dir, dest)
            for old in sorted(self.root.glob("checkpoint_*"))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# losses

class StageObjective(nn.Module):
    """The loss of one stage as a module (what DDP wraps); ``forward(batch inputs) -> loss``."""

    def __init__(self, model: nn.Module, stage: str):
        super().__init__()
        from diffusers import DDPMScheduler

        self.model = model
        self.stage = stage
        # SDXL's training schedule (DESIGN section 6)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear")

    def forward(self, hq: torch.Tensor, lq: torch.Tensor, *cond: Any) -> torch.Tensor:
        return self.encoder_loss(hq, lq) if self.stage == "encoder" else self.adaptor_loss(hq, lq, *cond)

    def encoder_loss(self, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """|| D(E_dr(x_LQ)) - D(E(x_GT)) ||^2, D and E frozen (section 5)."""
        m = self.model
        with torch.no_grad():
            target = m.decode(m.encode(hq)).float()  # (B, 3, H, W)
        pred = m.decode(m.encode_lq(lq)).float()
        return F.mse_loss(pred, target)

    def adaptor_loss(self, hq: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     hidden: torch.Tensor, added: dict[str, torch.Tensor], latent_g: torch.Generator) -> torch.Tensor:
        """epsilon-prediction MSE on VAE latents of the HQ crops, conditioned on text and z_LQ."""
        m = self.model
        with torch.no_grad():
            z0 = m.encode(hq, generator=latent_g, sample=True).float()  # (B, 4, H/8, W/8)
            z_lq = m.encode_lq(lq)
            z_t = self.scheduler.add_noise(z0, noise, timesteps)
        eps = m(z_t.to(m.unet.dtype), timesteps, hidden, added, z_lq=z_lq)
        return F.mse_loss(eps.float(), noise)


def step_generator(cfg: TrainConfig, rank: int, step: int) -> torch.Generator:
    """Noise, timesteps, prompt dropout of one step on one worker (step 0 for a fixed batch)."""
    return generator(cfg.seed, rank, "step", 0 if cfg.fixed_batch else step)


def adaptor_inputs(model, cfg: TrainConfig, batch: Batch, rank: int, step: int, device: torch.device) -> tuple:
    """(noise, timesteps, encoder_hidden_states, added_cond_kwargs, latent generator) of a stage-2 step."""
    from model.prior import latent_shape

    g = step_generator(cfg, rank, step)
    b, c = batch.hq.shape[0], cfg.crop_size
    noise = torch.randn(latent_shape(model.vae, b, c), generator=g).to(device)  # (B, 4, c/f, c/f)
    timesteps = torch.randint(0, 1000, (b,), generator=g).to(device)
    drop = torch.rand(b, generator=g) < cfg.prompt_dropout
    prompts = ["" if d else cap for d, cap in zip(drop.tolist(), batch.captions)]
    hidden, pooled = model.encode_prompt(prompts)  # (B, 77, D), (B, P)
    added = model.added_cond_kwargs(pooled, c, c)
    latent_g = torch.Generator("cpu").manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
    return noise, timesteps, hidden, added, latent_g


# ---------------------------------------------------------------------------------------------
# the skeleton

def device_of(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def setup_model(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device, init_from: Optional[str] = None):
    """The SUPIR model with only this stage's parts trainable, and its AdamW optimizer's parameters.

    ``init_from``: a checkpoint folder whose trainable parts replace the fresh ones (stage 2
    starts from stage 1's E_dr)."""
    from model.supir import build_model

    model = build_model(model_cfg, device=device)
    if init_from:
        load_parts(model, init_from)
    trained = TRAINED_PARTS[cfg.stage]
    for name, module in model.trainable_modules().items():
        module.requires_grad_(name in trained)  # explicit: E_dr is frozen in stage 2
        module.train(name in trained)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def setup_data(cfg: TrainConfig, session: Session, degrade: Optional[Any] = None) -> TrainExamples:
    """This worker's rows as a deterministic batch source (see stages/train_data.py)."""
    from degradations import DegradeConfig

    if cfg.on_the_fly_degradation and degrade is None:
        degrade = DegradeConfig()
    return TrainExamples(session.rows(), cfg.batch_size, cfg.crop_size, seed=cfg.seed, rank=session.rank,
                         fixed_batch=cfg.fixed_batch, degrade=degrade if cfg.on_the_fly_degradation else None,
                         color_shuffle=cfg.color_shuffle)


def load_parts(model, folder: str | os.PathLike, parts: Sequence[str] = ("encoder", "adaptor", "connectors")) -> None:
    """Load saved trainable parts into ``model`` in place (parameters keep their identity)."""
    from model.checkpoint import PARTS, check_prior, read_meta

    meta = read_meta(folder)
    check_prior(model.prior, meta["prior"])
    modules = model.trainable_modules()
    for name in parts:
        saved = PARTS[name].from_pretrained(Path(folder) / name, use_safetensors=True, torch_dtype=torch.float32)
        modules[name].load_state_dict(saved.state_dict())


def load_checkpoint(checkpoint_dir: Optional[str], model, cfg: TrainConfig) -> dict[str, Any]:
    """Restore the model's parts and EMA from a checkpoint; returns its state (step 0 when none),
    with the optimizer state under "optimizer" (loaded into the optimizer by the caller)."""
    if checkpoint_dir is None:
        return {"step": 0, "optimizer": None, "ema": None}
    from safetensors.torch import load_file

    d = Path(checkpoint_dir)
    state = json.loads((d / "state.json").read_text())
    saved = cfg.resume_key(state["config"])
    if saved != cfg.resume_key():
        from catalog.config import ConfigError

        raise ConfigError(f"checkpoint {d} was written with {saved}, this run has {cfg.resume_key()}: "
                          "use another train.name for a different run")
    load_parts(model, d / "model")
    state["optimizer"] = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
    state["ema"] = load_file(str(d / "ema.safetensors")) if (d / "ema.safetensors").is_file() else None
    return state


class EMA:
    """Exponential moving average of the trained parameters, float32."""

    def __init__(self, named: dict[str, nn.Parameter], decay: float, state: Optional[dict[str, torch.Tensor]] = None):
        self.decay = decay
        self.params = named
        self.shadow = {k: (state[k] if state is not None else p.detach()).clone().float() for k, p in named.items()}

    @torch.no_grad()
    def update(self) -> None:
        for k, p in self.params.items():
            self.shadow[k].lerp_(_local(p.detach()).float(), 1 - self.decay)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def save_checkpoint(folder: Path, model, optimizer, wrapped, cfg: TrainConfig, step: int, position: dict,
                    ema: Optional[EMA], extra: dict[str, Any], rank: int) -> None:
    """Write the checkpoint folder (rank 0 writes; under FSDP every rank takes part in the gathers)."""
    from safetensors.torch import save_file

    from model.checkpoint import save_trainable

    opt_state = dist_utils.optimizer_state(wrapped, optimizer, cfg.strategy)
    if cfg.strategy == "fsdp":
        model = _gathered_copy(model, cfg)
    if rank != 0:
        return
    save_trainable(model, folder / "model")
    torch.save(opt_state, folder / "optimizer.pt")
    if ema is not None:
        save_file({k: v.contiguous().cpu() for k, v in ema.shadow.items()}, str(folder / "ema.safetensors"))
    state = {"step": step, "data": position, "stage": cfg.stage, "config": to_dict(cfg), **extra}
    (folder / "state.json").write_text(json.dumps(state, indent=2))


def _gathered_copy(model, cfg: TrainConfig):
    """An unsharded CPU copy of the trainable parts (FSDP), sharing the prior."""
    from model.checkpoint import PARTS
    from model.supir import SUPIRModel

    parts = {}
    for name, module in model.trainable_modules().items():
        sd = dist_utils.full_state_dict(module, cfg.strategy if name in TRAINED_PARTS[cfg.stage] else "ddp")
        copy = PARTS[name].from_config(module.config)
        if sd:
            copy.load_state_dict(sd)
        parts[name] = copy
    return SUPIRModel(model.prior, parts["encoder"], parts["adaptor"], parts["connectors"], config=model.config)


def report_and_checkpoint(session: Session, metrics: dict[str, Any], checkpoint: bool, **save_kwargs) -> None:
    """Report metrics to the session; with ``checkpoint``, write one and report it with them."""
    if not checkpoint:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="supir-ckpt-") as d:
        save_checkpoint(Path(d), **save_kwargs)
        session.report(metrics, d if session.rank == 0 else None)


def training_step(wrapped: nn.Module, model, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                  cfg: TrainConfig, batch: Batch, rank: int, step: int, device: torch.device,
                  amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (forward under autocast, backward, clip, AdamW); returns (loss, grad norm)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        if cfg.stage == "encoder":
            loss = wrapped(batch.hq, batch.lq)
        else:
            loss = wrapped(batch.hq, batch.lq, *adaptor_inputs(model, cfg, batch, rank, step, device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    optimizer.step()
    return loss.detach(), grad_norm


def train_loop(cfg: TrainConfig, model_cfg: ModelConfig, session: Session, run=None,
               init_from: Optional[str] = None, degrade: Optional[Any] = None, use_gpu: bool = False,
               num_threads: int = 1) -> dict[str, Any]:
    """Train one stage on this worker; returns {"start_step", "step", "loss", "losses": {step: loss}}
    (losses averaged over workers).

    ``run``: a catalog.tracking.RunRef that rank 0 logs loss, lr and samples/s to every step, and
    sample grids to every ``sample_every`` steps. ``use_gpu`` and ``num_threads`` come from where the
    worker runs (pipelines/train.py reads them from the stage's ``resources``): this worker's GPU
    (LOCAL_RANK) when true and CUDA is present, else the CPU with ``num_threads`` torch threads."""
    from tqdm.auto import tqdm

    device = device_of(use_gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives run on the current device
    else:
        torch.set_num_threads(max(1, num_threads))
    rank, world_size = session.rank, session.world_size
    model = setup_model(cfg, model_cfg, device, init_from)
    data = setup_data(cfg, session, degrade)
    with session.checkpoint() as ckpt:
        state = load_checkpoint(ckpt, model, cfg)
    start = int(state["step"])

    objective = StageObjective(model, cfg.stage)
    parts = [model.trainable_modules()[n] for n in TRAINED_PARTS[cfg.stage]]
    wrapped = dist_utils.wrap(objective, parts, cfg.strategy, device)
    named = {f"{n}.{k}": p for n in TRAINED_PARTS[cfg.stage] for k, p in model.trainable_modules()[n].named_parameters()}
    optimizer = torch.optim.AdamW(list(named.values()), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    dist_utils.load_optimizer_state(wrapped, optimizer, state["optimizer"], cfg.strategy)
    ema = EMA(named, cfg.ema_decay, state["ema"]) if cfg.ema_decay else None
    amp = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    extra = {"mlflow_run_id": run.run_id if run is not None and run.enabled else None}
    log_run = run if rank == 0 and run is not None and run.enabled else None
    metric_log = MetricLog(log_run)

    loss_value = float("nan")
    losses: dict[int, float] = {}
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.stage}",
               disable=not (cfg.progress and rank == 0) or bool(os.environ.get("TQDM_DISABLE")))  # off in logs
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        batch = data.batch(step).to(device)
        lr = cfg.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = training_step(wrapped, model, optimizer, list(named.values()), cfg, batch, rank, step,
                                        device, amp)
        if ema is not None:
            ema.update()
        loss_value = dist_utils.all_mean(loss.item(), device)
        seconds = time.perf_counter() - t0
        done = step + 1
        losses[done] = loss_value
        metrics = {"loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                   "samples_per_s": cfg.batch_size * world_size / seconds, "step_seconds": seconds}
        metric_log.log(metrics, step=done)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4g}")
        # no sample grids under FSDP: sampling through the sharded model broke the optimizer-state
        # checkpoint that follows (tests/stages/test_train_dist.py); DDP and single-process runs sample
        if (cfg.stage == "adaptor" and cfg.sample_every and cfg.strategy != "fsdp"
                and (done % cfg.sample_every == 0 or done == cfg.steps)):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                grid = sample_grid(model, cfg, data, device)
            if log_run is not None:  # key + step: the UI's image step slider
                log_run.log_image(grid, "samples", step=done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            metric_log.flush()
            report_and_checkpoint(session, {"step": done, "start_step": start, "loss": loss_value,
                                            "data_position": json.dumps(data.position(done))}, True,
                                  model=model, optimizer=optimizer, wrapped=wrapped, cfg=cfg, step=done,
                                  position=data.position(done), ema=ema, extra=extra, rank=rank)
    bar.close()
    metric_log.flush()
    if start >= cfg.steps:  # nothing left to do: report so that the caller still gets a result
        session.report({"step": start, "start_step": start, "loss": loss_value}, None)
    return {"start_step": start, "step": max(start, cfg.steps), "loss": loss_value, "losses": losses}


@torch.no_grad()
def sample_grid(model, cfg: TrainConfig, data: TrainExamples, device: torch.device):
    """LQ | restored | HQ rows for the first ``num_samples`` examples of step 0, with the current
    weights and the restoration-guided sampler (model/sampler.py) at ``sample_num_steps`` steps."""

    from evaluation.grids import make_grid
    from model.colorfix import color_fix
    from model.sampler import Conditioning, GuidedDenoiser, SamplerConfig, sample, sampling_sigmas

    batch = data.batch(0).to(device)
    n = min(cfg.num_samples, batch.hq.shape[0])
    scfg = SamplerConfig(num_steps=cfg.sample_num_steps)
    c = cfg.crop_size
    rows = []
    for i in range(n):
        lq, hq = batch.lq[i:i + 1], batch.hq[i:i + 1]
        z_lq = model.encode_lq(lq)
        x_stage1 = model.decode(z_lq).clamp(-1, 1)
        z_center = model.encode(x_stage1).float()
        hidden, pooled = model.encode_prompt([batch.captions[i], scfg.negative_prompt])
        added = model.added_cond_kwargs(pooled, c, c)
        pos = Conditioning(hidden[:1], {k: v[:1] for k, v in added.items()})
        neg = Conditioning(hidden[1:], {k: v[1:] for k, v in added.items()})
        g = generator(cfg.seed, "sample", i)
        noise = torch.randn(z_lq.shape, generator=g).to(device)
        z = sample(GuidedDenoiser(model, scfg, pos, neg), noise, sampling_sigmas(scfg.num_steps).to(device), scfg,
                   z_lq=z_lq, z_center=z_center, generator=g)
        out = color_fix(model.decode(z).float(), x_stage1.float(), "wavelet")
        rows.append([to_pil(lq), to_pil(out), to_pil(hq)])
    return make_grid(rows, ["LQ", "restored", "HQ"], cell=max(64, min(256, c)))
