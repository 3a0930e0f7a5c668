"""Training examples: `pairs` rows (joined with captions by catalog/captions.py) -> seeded, deterministic batches of tensors.

Each worker holds its share of the rows (on Ray Train, stages/train_shards.py: a contiguous run of
the table planned on the driver, read by that worker alone; in one process, :func:`shard_rows`), in
pair_id order, so the split never depends on how the data arrived, and draws the batch of step
``k`` from a permutation per epoch seeded by (seed, rank, epoch). Crops, on-the-fly degradation
draws, noise, timesteps and prompt dropout come from generators seeded by (seed, rank, step).
So the batch of a step is a pure function of the step: a run resumed at step k + 1 sees exactly
what the uninterrupted run saw, and the data position in a checkpoint is just the step.

Images are decoded per batch (the rows keep PNG bytes), LQ is resized bicubic to the HQ size
(SUPIR trains with LQ at the HQ resolution), both are cropped at the same place, to [-1, 1].
No Ray here: pipelines/train.py hands each worker's rows to :class:`TrainExamples`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from catalog import codec
from catalog.seeds import generator

TRAIN_COLUMNS = ("pair_id", "image_id", "kind", "hq", "lq", "caption", "params")


def shard_rows(rows: Iterable[Mapping[str, Any]], rank: int, world_size: int) -> list[dict[str, Any]]:
    """This worker's rows: positions rank, rank + W, ... of the pair_id order (deterministic,
    balanced). With fewer rows than workers, every worker still gets one (wrapping around)."""
    ordered = sorted((dict(r) for r in rows), key=lambda r: str(r["pair_id"]))
    if not ordered:
        return []
    mine = ordered[rank::world_size]
    return mine or [ordered[rank % len(ordered)]]


def decode(data: bytes) -> np.ndarray:
    """PNG (or any Pillow format) bytes -> (H, W, 3) uint8."""
    return codec.decode_array(bytes(data))


def to_unit(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


@dataclass
class Batch:
    """One step's inputs on one worker; images (B, 3, C, C) in [-1, 1]."""

    hq: torch.Tensor
    lq: torch.Tensor
    captions: list[str]
    pair_ids: list[str]
    kinds: list[str]

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.hq.to(device), self.lq.to(device), self.captions, self.pair_ids, self.kinds)


class TrainExamples:
    """The rows of one worker and the deterministic batch of every step.

    ``fixed_batch`` always returns the batch of step 0 (same rows, crops, degradations): the
    "overfit one batch" sanity check. ``degrade`` (a DegradeConfig) re-synthesises the LQ of
    each HQ crop on the fly with the degradation library (degradations/), with parameters drawn per (pair, step).
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], batch_size: int, crop_size: int, seed: int = 0,
                 rank: int = 0, fixed_batch: bool = False, degrade: Optional[Any] = None,
                 color_shuffle: float = 0.0):
        if not rows:
            raise ValueError("no training rows on this worker: is the `pairs` table empty (status ok)?")
        self.rows = [dict(r) for r in rows]
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.seed = seed
        self.rank = rank
        self.fixed_batch = fixed_batch
        self.degrade = degrade
        self.color_shuffle = color_shuffle

    def __len__(self) -> int:
        return len(self.rows)

    def indices(self, step: int) -> list[int]:
        """Rows of ``step``: sample k = step * B + i is item k mod N of epoch k // N's permutation."""
        n, b = len(self.rows), self.batch_size
        step = 0 if self.fixed_batch else step
        out = []
        for k in range(step * b, (step + 1) * b):
            epoch, pos = divmod(k, n)
            perm = torch.randperm(n, generator=generator(self.seed, self.rank, "epoch", epoch))
            out.append(int(perm[pos]))
        return out

    def position(self, step: int) -> dict[str, int]:
        """The data position after ``step`` steps (what a checkpoint records)."""
        k = step * self.batch_size
        return {"samples_seen": k, "epoch": k // len(self.rows), "index_in_epoch": k % len(self.rows)}

    def batch(self, step: int) -> Batch:
        key_step = 0 if self.fixed_batch else step
        g = generator(self.seed, self.rank, "crop", key_step)
        hqs, lqs = [], []
        rows = [self.rows[i] for i in self.indices(step)]
        for row in rows:
            hq, lq = self._pair(row, g)
            hqs.append(hq)
            lqs.append(lq)
        hq = torch.stack(hqs)  # (B, 3, C, C) in [0, 1]
        lq = torch.stack(lqs)
        if self.degrade is not None:
            hq, lq = self._degrade(hq, [str(r["pair_id"]) for r in rows], key_step)
        if self.color_shuffle > 0:  # one permutation per pair, the same for HQ and LQ
            for i in range(len(rows)):
                if float(torch.rand((), generator=g)) < self.color_shuffle:
                    perm = torch.randperm(3, generator=g)
                    hq[i], lq[i] = hq[i, perm], lq[i, perm]
        return Batch(hq * 2 - 1, lq * 2 - 1, [str(r.get("caption") or "") for r in rows],
                     [str(r["pair_id"]) for r in rows], [str(r.get("kind") or "degraded") for r in rows])

    def _pair(self, row: Mapping[str, Any], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ and LQ crops (3, C, C) in [0, 1] at the same place; LQ bicubic-resized to the HQ size."""
        hq = decode(row["hq"])
        h, w = hq.shape[:2]
        c = self.crop_size
        if min(h, w) < c:
            raise ValueError(f"pair {row['pair_id']}: HQ is {w}x{h}, smaller than train.crop_size {c}")
        top = int(torch.randint(0, h - c + 1, (1,), generator=g))
        left = int(torch.randint(0, w - c + 1, (1,), generator=g))
        hq_crop = hq[top:top + c, left:left + c]
        if self.degrade is not None:  # LQ made from the crop later
            return to_unit(hq_crop), to_unit(hq_crop)
        lq_img = codec.decode_rgb(bytes(row["lq"]))
        if lq_img.size != (w, h):  # SUPIR: LQ at the training (HQ) resolution
            lq_img = lq_img.resize((w, h), Image.Resampling.BICUBIC)
        lq = np.asarray(lq_img)[top:top + c, left:left + c]
        return to_unit(hq_crop), to_unit(lq)

    def _degrade(self, hq: torch.Tensor, pair_ids: list[str], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        from dataclasses import replace

        from degradations import degrade_pairs, draw_params

        # the degrade stage's section at this stage's crop size (train.crop_size, which may differ from the
        # pairs' degrade.gt_size), LQ back at the crop size as SUPIR trains
        cfg = replace(self.degrade, gt_size=self.crop_size, lq_resize_to_gt=True)
        params = [draw_params(cfg, f"{pid}:{self.rank}:{step}") for pid in pair_ids]
        target, lq = degrade_pairs(hq, params)  # USM-sharpened target, LQ at the crop size
        return target, lq


def row_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[str(r.get("kind"))] = kinds.get(str(r.get("kind")), 0) + 1
    return {"rows": len(rows), "kinds": json.dumps(kinds, sort_keys=True)}
