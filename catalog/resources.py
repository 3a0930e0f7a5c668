"""The one vocabulary of Ray resources: each stage section's ``resources:`` (pipelines/ reads it).

    filter:
      resources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0}

``workers`` is how many Ray workers run the stage at once: the actors of a Ray Data stage (one model
each), the Ray Train workers of a training stage. The stage's code (stages/, evaluation/) never
reads this section: where it runs is pipelines/' business (STYLE.md 7). ``batch_size`` in a stage
section is never a resource: it is the rows of one model call (README "Configuration").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from catalog.config import check


@dataclass
class Resources:
    """What pipelines/ ask Ray for, per worker of one stage."""

    workers: int = 1
    """Ray workers running the stage at once: actors of a Ray Data stage (the pool's largest size),
    Ray Train workers of a training stage."""

    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each worker (a training worker runs max(1, floor of it) torch threads)."""

    gpus_per_worker: float = 0.0
    """GPUs each worker holds when the Ray cluster has GPUs (a CPU-only cluster runs it with 0);
    fractions share a GPU between workers."""

    def check(self, section: str) -> None:
        """The checks, naming ``<section>.resources.<key>`` (a section's ``__post_init__`` calls it)."""
        p = f"{section}.resources"
        check(isinstance(self.workers, int) and self.workers >= 1, f"{p}.workers", self.workers, "an integer >= 1")
        check(math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0, f"{p}.cpus_per_worker",
              self.cpus_per_worker, "a number > 0")
        check(math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0, f"{p}.gpus_per_worker",
              self.gpus_per_worker, "a number >= 0")


def resource_keys(workers: str | None = None, gpus: str | None = None, cpus: str | None = None) -> dict[str, str]:
    """A section's former resource keys for its ``RENAMED`` table (catalog.config.from_dict refuses
    each, naming its key under ``resources:``)."""
    old = {workers: "resources.workers", gpus: "resources.gpus_per_worker", cpus: "resources.cpus_per_worker"}
    return {k: v for k, v in old.items() if k}
