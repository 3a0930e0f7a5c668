"""Device and dtype names of the configs -> torch objects, one rule for every stage.

``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
``dtype``: "auto" (bf16 on a CUDA GPU that has it, else ``cuda_fallback``; float32 on CPU),
"float32", "bfloat16" or "float16".
"""
from __future__ import annotations

import torch

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, cuda_fallback: torch.dtype = torch.float16) -> torch.dtype:
    """``cuda_fallback``: the dtype of "auto" on a GPU without bf16 (float16, or float32 where
    float16 overflows, e.g. SDXL's original VAE)."""
    if name != "auto":
        return TORCH_DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else cuda_fallback
    return torch.float32
