"""model/flops.py: the GPU peaks, MFU, and FLOPs counted by torch (bench/gpu.py's MFU)."""
from __future__ import annotations

import pytest
import torch

from model import flops


def test_peak_and_mfu_arithmetic():
    assert flops.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert flops.peak_bf16_flops("NVIDIA H100 PCIe") == 756.0e12  # the longest matching name wins
    assert flops.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312.0e12
    assert flops.peak_bf16_flops("Some Other GPU") is None
    assert flops.mfu(494.7e12, 1.0, 989.4e12) == pytest.approx(0.5)
    assert flops.mfu(1e12, 0.5, 100e12) == pytest.approx(0.02)
    assert flops.mfu(1e12, 1.0, None) is None


def test_count_flops_matches_the_matmul_formula():
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    # forward 2*B*in*out; backward: grad of input and of weight, the same again each
    assert flops.count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * 8 * 64 * 32
