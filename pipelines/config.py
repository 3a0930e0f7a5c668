"""The run config: one typed section per stage, loaded from YAML with command-line overrides.

    python pipelines/full.py --config configs/demo.yaml filter.min_side=512 tracking.run_name=try2

Unknown keys and bad values fail here, before Ray starts or any stage runs, with a message naming
the key, the value and what is allowed.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from catalog.config import ConfigError, apply_overrides, check, from_dict, load_yaml, to_dict
from catalog.tracking import TrackingConfig
from evaluation.baselines import BaselineConfig
from evaluation.metrics import EvalConfig
from model.config import ModelConfig
from stages.ablations import AblationConfig
from stages.caption import CaptionConfig
from stages.crawl import CrawlConfig
from stages.degrade import DegradeConfig
from stages.filter import FilterConfig
from stages.negatives import NegativesConfig
from stages.prior_train import PriorTrainConfig
from stages.restore import RestoreConfig
from stages.split import SplitConfig
from stages.train_config import TrainSection

ROOT = Path(__file__).resolve().parents[1]
# the stages that exist, in DAG order
STAGES = ("crawl", "filter", "caption", "degrade", "prior", "negatives", "train_encoder", "train_adaptor",
          "restore", "ablations", "baselines", "evaluate")


@dataclass
class RayConfig:
    """How the pipeline reaches Ray."""

    # "" starts (or joins, under `ray job submit`) a local cluster; "auto" joins a running one;
    # or ray://host:10001 / host:6379
    address: str = ""
    # CPUs for a local cluster started by the pipeline (null: all)
    num_cpus: int | None = None
    # show Ray Data progress bars
    progress_bars: bool = True

    def __post_init__(self):
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

    def __post_init__(self):
        for s in self.stages:
            check(s in STAGES, "stages", s, f"stage names among {', '.join(STAGES)}")


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
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", "-c", default=str(ROOT / default_config), help="YAML run config")
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides (YAML values), e.g. filter.min_side=512")
    return ap.parse_args(argv)
