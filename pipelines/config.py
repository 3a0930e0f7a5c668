"""The run config: one typed section per stage, loaded from YAML with command-line overrides.

    python pipelines/full.py --config configs/demo.yaml filter.min_side=512 tracking.run_name=try2

Unknown keys and bad values fail here, before Ray starts or any stage runs, with a message naming
the key, the value and what is allowed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import yaml

from catalog.config import ConfigError, apply_overrides, check, from_dict, load_yaml, to_dict
from catalog.tracking import TrackingConfig
from degradations import DegradeConfig
from evaluation.baselines import BaselineConfig
from evaluation.metrics import EvalConfig
from model.config import ModelConfig
from pipelines.cli import ROOT, STAGES, parser
from stages.ablations import AblationConfig
from stages.caption import CaptionConfig
from stages.crawl_config import CrawlConfig
from stages.filter import FilterConfig
from stages.negatives import NegativesConfig
from stages.prior_train_config import PriorTrainConfig
from stages.restore import RestoreConfig
from stages.split import SplitConfig
from stages.train_config import TrainSection

__all__ = ["ROOT", "STAGES", "RayConfig", "RunConfig", "config_yaml", "load_config", "parse_args"]


@dataclass
class RayConfig:
    """How the pipeline reaches Ray."""

    # "" starts (or joins, under `ray job submit`) a local cluster; "auto" joins a running one;
    # or ray://host:10001 / host:6379
    address: str = ""
    # CPUs for a local cluster started by the pipeline (null: all)
    num_cpus: int | None = None
    # progress bars (Ray Data's and tqdm's, in the driver and the workers): true, false, or
    # "auto": only when stderr is a terminal, so a log file gets one line per stage event instead
    progress_bars: bool | str = "auto"
    # restarts of a stage's Ray Data actor when it dies (-1: unlimited, Ray Data's default). Ray logs
    # an ERROR line for each restartable actor whose arguments sit in the object store (all of Ray
    # Data's do, ray-project/ray#53727); 0 keeps a single-machine run's log clean, and a stage whose
    # actor died resumes from its finished parts when rerun
    actor_max_restarts: int = -1

    def __post_init__(self):
        check(self.actor_max_restarts >= -1, "ray.actor_max_restarts", self.actor_max_restarts, "an integer >= -1")
        check(self.progress_bars in (True, False, "auto"), "ray.progress_bars", self.progress_bars,
              'true, false or "auto"')
        check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", self.num_cpus, "null or an integer >= 1")


@dataclass
class RunConfig:
    """A whole pipeline run."""

    # lake root: a local folder (relative to the working directory) or a pyarrow filesystem URI
    lake: str = "lake"
    # which stages of the DAG to run, in order; a stage reads its inputs from the lake
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    # held-out photos (by image_id) that no training stage reads; restore and evaluate score both splits
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior_train: PriorTrainConfig = field(default_factory=PriorTrainConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    train: TrainSection = field(default_factory=TrainSection)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    # rows beside the trained model on the same pairs: D(E(x_LQ)), D(E_dr(x_LQ)), control scale 0, seeds
    ablations: AblationConfig = field(default_factory=AblationConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    # a full-scale run: refuse to start (before any work) where a stage would fall back to the tiny
    # preset or to the CPU, and when the Ray cluster has no GPU (configs/sdxl.yaml sets it)
    require_gpus: bool = False

    def __post_init__(self):
        check(isinstance(self.lake, str) and self.lake.strip() != "", "lake", self.lake,
              "a folder or URI (an empty path would be the working directory)")
        for s in self.stages:
            check(s in STAGES, "stages", s, f"stage names among {', '.join(STAGES)}")
        if self.require_gpus:
            check_full_scale(self)


def _on_gpu(device: str, gpus: float) -> bool:
    return device != "cpu" and gpus > 0


def check_full_scale(cfg) -> None:
    """With ``require_gpus: true``, the checks that no configured stage runs tiny or on the CPU.

    ``cfg`` is a RunConfig."""
    stages = set(getattr(cfg, "stages", None) or STAGES)
    model = cfg.model
    why = "(require_gpus: true refuses a run that would fall back to the tiny preset or the CPU)"
    check(model.preset == "sdxl", "model.preset", model.preset, f"sdxl {why}")
    check(model.prior not in (None, "", "train"), "model.prior", model.prior,
          f"a local SDXL folder or file, or a hub id {why}")
    for stage in ("encoder", "adaptor"):
        if f"train_{stage}" in stages:
            t = cfg.train.stage(stage)
            gpus = t.resources.gpus_per_worker
            check(gpus > 0, f"train.{stage}.resources.gpus_per_worker", gpus, f"1 {why}")
    for name in ("caption", "negatives", "restore", "baselines", "evaluate"):
        section = getattr(cfg, name, None)
        if section is None or name not in stages or (name == "caption" and section.captioner != "llava"):
            continue
        check(section.device != "cpu", f"{name}.device", section.device, f"auto or cuda {why}")
        gpus = section.resources.gpus_per_worker
        check(gpus > 0, f"{name}.resources.gpus_per_worker", gpus, f"a number > 0 {why}")
    caption = getattr(cfg, "caption", None)
    if caption is not None and "caption" in stages and caption.captioner == "llava":
        check(cfg.caption.model != "tiny-random", "caption.model", cfg.caption.model, f"a LLaVA model {why}")


def check_gpus(cfg, ray_joined: bool) -> None:
    """With ``require_gpus: true``, refuse a run without GPUs: before anything starts, when the run
    would start a local Ray cluster on this machine (no ray.address, no RAY_ADDRESS) and it has no
    CUDA device; once ``ray_joined``, when the cluster offers no GPU."""
    if not getattr(cfg, "require_gpus", False):
        return
    hint = ("start one with `ray up ray_cluster.yaml` and submit the run to it (README \"On a cluster\"), "
            "or use configs/demo.yaml on a CPU")
    if not ray_joined:
        if os.environ.get("RAY_ADDRESS") or cfg.ray.address:
            return  # checked once joined
        import torch

        if torch.cuda.device_count() == 0:
            raise ConfigError("require_gpus: true (a full-scale run) refuses to start: without ray.address or "
                              f"RAY_ADDRESS it would start a local Ray cluster, and this machine has no CUDA device; {hint}")
        return
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus <= 0:
        raise ConfigError(f"require_gpus: true (a full-scale run) refuses to start: the Ray cluster it joined has no "
                          f"GPU; {hint}")


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML file into RunConfig, apply ``key.path=value`` overrides, validate everything."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{e}") from None


def config_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_args(argv: Sequence[str] | None, description: str, default_config: str = "configs/demo.yaml"):
    return parser(description, default_config).parse_args(argv)
