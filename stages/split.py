"""The held-out split: photos (by image_id) that no training stage sees, restored and scored apart.

    split = assign_split(kept_image_ids, SplitConfig(heldout_fraction=0.25, seed=0))
    split["<image_id>"]  # "train" or "heldout"

Every image draws u = seed_of("split", seed, image_id) / 2^63, uniform in [0, 1) and a pure function
of its content key and the seed, so an image's split never depends on the batch or the order it
arrived in, and the same photo is held out on every machine. The held-out images are those with
u < ``heldout_fraction``; when that leaves fewer than ``min_heldout`` (a small set such as the
demo's 15 photos), the ``min_heldout`` images with the smallest u are held out instead. So the split
of a set is fixed by (its image_ids, the config); stages 0, 1 and 2 and the negatives read only
"train" images, restore and evaluate score both splits, and `metrics` carries the split column.
No Ray here: pipelines/ pass the kept image_ids of `filtered`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from catalog.config import check
from catalog.seeds import seed_of

TRAIN, HELDOUT = "train", "heldout"
SPLITS = (TRAIN, HELDOUT)


@dataclass
class SplitConfig:
    """The `split:` section: which kept photos are held out of every training stage."""

    heldout_fraction: float = 0.25
    """Share of the kept photos held out (an image is held out when its seeded draw is below it)."""

    min_heldout: int = 1
    """At least this many photos are held out (the smallest draws), however small the set."""

    seed: int = 0
    """Seed of the per-image draws (another seed holds out other photos)."""

    def __post_init__(self) -> None:
        check(isinstance(self.heldout_fraction, (int, float)) and 0.0 <= self.heldout_fraction < 1.0,
              "split.heldout_fraction", self.heldout_fraction, "a number in [0, 1)")
        check(isinstance(self.min_heldout, int) and self.min_heldout >= 0, "split.min_heldout", self.min_heldout,
              "an integer >= 0")
        check(isinstance(self.seed, int) and self.seed >= 0, "split.seed", self.seed, "an integer >= 0")


def draw(image_id: str, seed: int) -> float:
    """The image's uniform draw in [0, 1): a function of (seed, image_id) only."""
    return seed_of("split", seed, image_id) / 2.0 ** 63


def assign_split(image_ids: Iterable[str], cfg: SplitConfig) -> dict[str, str]:
    """image_id -> "train" or "heldout" for a set of kept images (duplicates count once).

    Raises ValueError when no image would be left to train on (more held out than there are)."""
    ids = sorted(set(map(str, image_ids)))
    u = {i: draw(i, cfg.seed) for i in ids}
    held = {i for i in ids if u[i] < cfg.heldout_fraction}
    if len(held) < cfg.min_heldout:
        held = set(sorted(ids, key=lambda i: (u[i], i))[:cfg.min_heldout])
    if ids and len(held) >= len(ids):
        raise ValueError(f"split: {len(held)} of {len(ids)} kept images would be held out, none left to train on "
                         f"(split.heldout_fraction = {cfg.heldout_fraction}, split.min_heldout = {cfg.min_heldout}); "
                         "keep more images or hold out fewer")
    return {i: HELDOUT if i in held else TRAIN for i in ids}


def train_ids(split: dict[str, str]) -> list[str]:
    return sorted(i for i, s in split.items() if s == TRAIN)


def heldout_ids(split: dict[str, str]) -> list[str]:
    return sorted(i for i, s in split.items() if s == HELDOUT)
