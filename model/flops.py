"""Model FLOPs and utilisation: what a step of a model costs, and how much of a GPU it used.

bench/gpu.py reports MFU with these: model FLOPs per step (counted by torch's FlopCounterMode) /
seconds per step / the GPU's dense bf16 peak.
"""
from __future__ import annotations

from typing import Callable, Optional

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, by name fragment.
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "GH200": 989.4e12, "A100": 312.0e12,
             "L40S": 362.1e12, "L4": 121.0e12, "A10G": 70.0e12, "RTX 4090": 165.2e12, "B200": 2250.0e12}


def peak_bf16_flops(device_name: str) -> Optional[float]:
    """The GPU's dense bf16 peak, matched by the longest name fragment; None when unknown."""
    hits = [k for k in PEAK_BF16 if k.lower() in device_name.lower()]
    return PEAK_BF16[max(hits, key=len)] if hits else None


def mfu(flops_per_step: float, seconds_per_step: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a known peak)."""
    if not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward), by
    torch.utils.flop_counter.FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())
