"""Typed config of SUPIR training: :class:`TrainConfig` (one stage) and :class:`TrainSection` (the
`train:` section of a run config: both stages, run name, registry name and alias)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, Optional

from catalog.config import check, to_dict
from catalog.resources import Resources, resource_keys

STAGES = ("encoder", "adaptor")
TRAINED_PARTS = {"encoder": ("encoder",), "adaptor": ("adaptor", "connectors")}


@dataclass
class TrainConfig:
    """One training stage (the `train.encoder` / `train.adaptor` sections of a run config)."""

    stage: Literal["encoder", "adaptor"] = "encoder"
    """encoder: stage 1, E_dr. adaptor: stage 2, adaptor + connectors (paper section 3.1)."""

    steps: int = 1000
    """Optimizer steps in total (a resumed run continues up to this)."""

    batch_size: int = 2
    """Samples per worker per step (paper: 256 in total on 64 GPUs)."""

    lr: float = 1e-5
    """AdamW learning rate after warmup (paper: 1e-5, constant)."""

    warmup_steps: int = 0
    """Linear warmup from 0 to lr over this many steps."""

    lr_decay: Literal["constant", "cosine"] = "constant"
    """After warmup: constant (paper), or cosine from lr down to 0 at ``steps`` (a short run then ends
    on small updates, so its last weights do not depend on the last few batches)."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""

    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """auto: bf16 autocast on a GPU, none on the CPU."""

    gradient_checkpointing: bool = False
    """Recompute activations in backward (adaptor blocks, decoder steps, E_dr): less memory."""

    ema_decay: Optional[float] = None
    """EMA of the trained weights with this decay (e.g. 0.999); the registered model uses it. null: off."""

    prompt_dropout: float = 0.1
    """Probability that a sample's caption is replaced by the empty prompt (classifier-free guidance)."""

    crop_size: int = 512
    """Square training crops, pixels (paper: 512); a multiple of 8. Not degrade.gt_size under another
    name: crops are cut from the stored pairs (gt_size a side) and may be smaller (the demo trains
    stage 2 on 64 px crops of 128 px pairs); with on_the_fly_degradation the LQ is made at this size."""

    on_the_fly_degradation: bool = False
    """Degrade each HQ crop anew at every step (the degrade stage's code and config) instead of
    using the stored LQ of the pair."""

    color_shuffle: float = 0.0
    """Probability that a training pair gets one random permutation of its RGB channels (HQ and LQ
    alike), for stage 1 on a few photos after a VAE trained with prior_train.recolor. Leave it 0
    for the adaptor, whose captions name colours."""

    fixed_batch: bool = False
    """Train on the batch of step 0 over and over, same noise and timesteps (overfitting check)."""

    init_from: str = "auto"
    """Trainable parts to start from: a checkpoint folder (model/checkpoint.py layout); "auto":
    for stage 2 the result of stage 1 of the same run name (when there is one); "": fresh."""

    checkpoint_every: int = 500
    """Save a checkpoint every this many steps (and at the last step)."""

    keep_checkpoints: int = 2
    """Checkpoints kept in storage (the newest)."""

    sample_every: int = 500
    """Stage 2: log sample restorations (LQ | restored | HQ grid) every this many steps and at the
    last step, as MLflow images under the key ``samples`` (0: off)."""

    sample_num_steps: int = 20
    """Sampler steps of those sample restorations."""

    num_samples: int = 2
    """Images in each sample grid."""

    resources: Resources = field(default_factory=Resources)
    """Ray Train workers (one process each), the CPUs Ray reserves for each (a CPU worker runs
    max(1, floor of it) torch threads; leave at least one whole CPU of the node to Ray Data's read
    tasks, or the data never arrives, e.g. 0.5 with 2 workers on 2 CPUs) and their GPUs: 1 trains
    on one GPU per worker (nccl), 0 on CPU workers (gloo)."""

    RENAMED: ClassVar[dict[str, str]] = {"sample_steps": "sample_num_steps",
                                         **resource_keys(workers="num_workers", gpus="use_gpu", cpus="cpus_per_worker")}

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp, or fsdp: shard the trained parts and their optimizer state (SDXL-size adaptor)."""

    seed: int = 0
    """Seed of data order, crops, noise, timesteps and prompt dropout."""

    max_failures: int = 0
    """Worker-group restarts Ray Train makes after a failure (each resumes from the latest checkpoint)."""

    progress: bool = True
    """A progress bar over steps on rank 0."""

    def __post_init__(self) -> None:
        p = f"train.{self.stage}"
        check(self.stage in STAGES, "train.stage", self.stage, "encoder or adaptor")
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "sample_num_steps",
                     "num_samples"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{p}.{name}",
                  getattr(self, name), "an integer >= 1")
        for name in ("warmup_steps", "sample_every", "max_failures", "seed"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{p}.{name}",
                  getattr(self, name), "an integer >= 0")
        self.resources.check(p)
        check(self.resources.gpus_per_worker in (0, 1), f"{p}.resources.gpus_per_worker", self.resources.gpus_per_worker,
              "0 (CPU workers, gloo) or 1 (one GPU per worker, nccl)")
        check(self.lr > 0 and math.isfinite(self.lr), f"{p}.lr", self.lr, "a number > 0")
        check(self.lr_decay in ("constant", "cosine"), f"{p}.lr_decay", self.lr_decay, "constant or cosine")
        check(self.weight_decay >= 0, f"{p}.weight_decay", self.weight_decay, "a number >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{p}.betas", list(self.betas),
              "two numbers in [0, 1)")
        check(self.grad_clip >= 0, f"{p}.grad_clip", self.grad_clip, "a number >= 0 (0: off)")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, f"{p}.ema_decay", self.ema_decay,
              "null or a number in (0, 1)")
        for name in ("prompt_dropout", "color_shuffle"):
            check(0 <= getattr(self, name) <= 1, f"{p}.{name}", getattr(self, name), "a probability in [0, 1]")
        check(self.crop_size >= 16 and self.crop_size % 8 == 0, f"{p}.crop_size", self.crop_size,
              "a multiple of 8, >= 16")
        check(self.mixed_precision in ("auto", "bf16", "no"), f"{p}.mixed_precision", self.mixed_precision,
              "auto, bf16 or no")
        check(self.strategy in ("ddp", "fsdp"), f"{p}.strategy", self.strategy, "ddp or fsdp")
        check(not (self.strategy == "fsdp" and self.ema_decay), f"{p}.ema_decay", self.ema_decay,
              "null with strategy fsdp (the EMA would hold only this worker's shard)")

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based): linear warmup, then constant (paper) or cosine
        down to 0 at ``steps``."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay == "cosine":
            done = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        return self.lr

    def resume_key(self, recorded: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """Fields a resumed run must share with its checkpoint (the rest may change, e.g. steps).

        ``recorded``: the key of a checkpoint's recorded config instead (``to_dict`` of a TrainConfig;
        fields it lacks are this one's; one written before ``resources:`` has ``num_workers``)."""
        recorded = dict(recorded or {})
        d = to_dict(self) | recorded
        workers = recorded["num_workers"] if "num_workers" in recorded else d["resources"]["workers"]
        return {k: d[k] for k in ("stage", "batch_size", "crop_size", "seed", "fixed_batch",
                                  "on_the_fly_degradation")} | {"num_workers": workers}


@dataclass
class TrainSection:
    """The `train:` section of a run config: both stages, where they go, how the result is registered."""

    name: str = "supir"
    """Run name: checkpoints under <lake>/train/<name>-<stage>/; rerunning a name resumes it."""

    registered_model: str = "supir"
    """MLflow registered model the result of each stage becomes a version of ("": do not register)."""

    alias: str = "champion"
    """Alias set on each new version, besides the stage name ("encoder" / "adaptor"). MLflow
    reserves "latest": ``models:/<name>@latest`` is read as the newest version (catalog/registry.py)."""

    encoder: TrainConfig = field(default_factory=lambda: TrainConfig(stage="encoder"))
    """Stage 1: E_dr."""

    adaptor: TrainConfig = field(default_factory=lambda: TrainConfig(stage="adaptor"))
    """Stage 2: adaptor + connectors."""

    def __post_init__(self) -> None:
        check(bool(self.name.strip()) and "/" not in self.name, "train.name", self.name, "a non-empty name without /")
        check(self.alias == "" or (self.alias.replace("-", "").replace("_", "").isalnum()
                                   and self.alias.lower() != "latest" and not self.alias.isdigit()),
              "train.alias", self.alias, "letters, digits, - or _, not 'latest' (reserved by MLflow)")
        # each section trains its own stage, whatever `stage` says in it
        self.encoder.stage, self.adaptor.stage = "encoder", "adaptor"

    def stage(self, stage: str) -> TrainConfig:
        check(stage in STAGES, "stage", stage, "encoder or adaptor")
        return getattr(self, stage)
