"""model/devices.py: the one rule that turns config device and dtype names into torch objects."""
import pytest
import torch

from model.devices import resolve_device, resolve_dtype


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bf16, fallback, expected", [(True, torch.float16, torch.bfloat16),
                                                      (False, torch.float16, torch.float16),
                                                      (False, torch.float32, torch.float32)])
def test_auto_dtype_on_cuda(monkeypatch, bf16, fallback, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_dtype("auto", torch.device("cuda"), cuda_fallback=fallback) == expected


def test_explicit_and_cpu_dtypes():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16 and resolve_dtype("float16", cpu) == torch.float16
