"""Per-sample seeds: one function from key parts to a seed, used by every stage that draws.

A sample's randomness depends on its own key (run seed, image_id, pair_id, step, ...), never on the
batch it lands in or on global random state, so any sample can be regenerated alone. The seed is
the first 63 bits of sha256 over the parts joined by ":" (stable across processes, unlike hash()).
"""
from __future__ import annotations

import hashlib
from typing import Any


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from any key parts: ``seed_of(0, "abc") == seed_of("0", "abc")``."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16) >> 1


def generator(*parts: Any):
    """A CPU ``torch.Generator`` seeded with :func:`seed_of` of ``parts``."""
    import torch

    return torch.Generator("cpu").manual_seed(seed_of(*parts))
