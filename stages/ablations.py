"""Ablation rows beside the trained model, on the same pairs (no Ray here).

The evidence that each training stage learned something (SUPIR sections 3.1-3.2):

    vae             D(E(x_LQ))       the frozen prior VAE's own round trip of the LQ: the untrained encoder
    stage1          D(E_dr(x_LQ))    stage 1 alone: the degradation-robust encoder, no sampling
    supir_control0  the full sampler at control scale 0: the prior alone, the adaptor unused
                    (bit for bit the untrained adaptor's UNet, model/connectors.py)
    supir           the trained model (the restore stage), at more sampler seeds for a seed spread

``vae`` and ``stage1`` are :class:`PassThroughRestorer`: model/restoration.py's
:meth:`~model.restoration.Restoration.round_trip` (working size, tiled VAE, resize back to the target;
no sampler, no colour fix) in the restore stage's batch adapter. The sampler rows are the restore
stage's own :class:`~stages.restore.Restorer` with another SamplerConfig (see :func:`ablation_runs`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from PIL import Image

from catalog.config import check, digest
from model.restoration import ROUND_TRIPS
from stages.restore import RestoreConfig, Restorer

PASS_THROUGH = ROUND_TRIPS
SAMPLER_ROWS = ("supir_control0",)
METHODS = PASS_THROUGH + SAMPLER_ROWS


@dataclass
class AblationConfig:
    """The `ablations:` section: which ablation rows, on which split, at which sampler seeds."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Rows beside the trained model: vae (D(E(x_LQ))), stage1 (D(E_dr(x_LQ))), supir_control0."""

    seeds: list[int] = field(default_factory=list)
    """More sampler seeds for the sampler rows (supir and supir_control0), beside restore.sampler.seed:
    one restoration run per seed, so that the seed spread of each row can be measured."""

    split: Literal["heldout", "train", "all"] = "heldout"
    """Whose pairs the ablation runs restore: the held-out photos' (Table 1), the training photos', or all."""

    def __post_init__(self) -> None:
        for m in self.methods:
            check(m in METHODS, "ablations.methods", m, "names among " + ", ".join(METHODS))
        check(len(set(self.methods)) == len(self.methods), "ablations.methods", self.methods, "distinct names")
        for s in self.seeds:
            check(isinstance(s, int) and s >= 0, "ablations.seeds", s, "integers >= 0")
        check(self.split in ("heldout", "train", "all"), "ablations.split", self.split, "heldout, train or all")


@dataclass
class AblationRun:
    """One ablation row: the restore config it runs with and, for the pass-through rows, which encoder."""

    restore: RestoreConfig
    mode: Literal["sample", "vae", "stage1"] = "sample"

    @property
    def method(self) -> str:
        return self.restore.method


def ablation_runs(restore: RestoreConfig, cfg: AblationConfig) -> list[AblationRun]:
    """Every run of the section: the pass-through rows once (they draw no noise), the sampler rows at
    restore.sampler.seed and each extra seed, and the trained model (``supir``) at the extra seeds
    (its seed restore.sampler.seed is the restore stage's own run)."""
    runs: list[AblationRun] = []
    for mode in PASS_THROUGH:
        if mode in cfg.methods:
            r = dataclasses.replace(restore, method=mode, progress=False)
            runs.append(AblationRun(dataclasses.replace(r, run_id=f"{mode}-{digest(r.params())[:12]}"), mode))
    seeds = [restore.sampler.seed] + [s for s in cfg.seeds if s != restore.sampler.seed]
    for seed in seeds:
        sampler = dataclasses.replace(restore.sampler, seed=seed)
        if "supir_control0" in cfg.methods:
            control0 = dataclasses.replace(sampler, control_scale=0.0, linear_control_scale=False)
            runs.append(AblationRun(dataclasses.replace(restore, sampler=control0, method="supir_control0")))
        if seed != restore.sampler.seed:
            runs.append(AblationRun(dataclasses.replace(restore, sampler=sampler)))
    return runs


class PassThroughRestorer(Restorer):
    """x_LQ -> D(E(x_LQ)) (``vae``) or D(E_dr(x_LQ)) (``stage1``) at the restore stage's working size."""

    def __init__(self, run: AblationRun, model=None):
        check(run.mode in PASS_THROUGH, "ablation mode", run.mode, " or ".join(PASS_THROUGH))
        super().__init__(run.restore, model=model)
        self.mode = run.mode

    def restore(self, img: Image.Image, key: str, caption: Optional[str] = None,
                scale: Optional[int] = None) -> Image.Image:
        return self.restoration.round_trip(img, self.mode, scale)


def stage_class(run: AblationRun):
    """The callable class a Ray actor builds with ``cls(run)``."""
    return PassThroughRestorer if run.mode in PASS_THROUGH else SamplerRow


class SamplerRow(Restorer):
    """The restore stage's Restorer, built from an :class:`AblationRun` (what the actor pool passes)."""

    def __init__(self, run: AblationRun, model=None):
        super().__init__(run.restore, model=model)
