"""Weight files run no code: metric weights load weights-only, and hash-named files must match their name."""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from evaluation.metrics import load_metric
from evaluation.safe_load import TorchScriptRefused, WeightsTampered, check_name_hash, guarded_loads, is_torchscript
from tests.support import ROOT


class _Payload:
    """Unpickling this touches ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": _Payload(marker)}, path)


def test_crafted_pickle_runs_no_code_under_guarded_loads(tmp_path):
    marker = tmp_path / "ran"
    crafted(tmp_path / "evil.pth", marker)
    with guarded_loads():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / "evil.pth", weights_only=False)  # what pyiqa passes
    assert not marker.exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pth")
    with guarded_loads():
        assert torch.equal(torch.load(tmp_path / "plain.pth", weights_only=False)["w"], torch.ones(2))


def test_hash_in_the_name_is_checked(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1)}, good)
    prefix = hashlib.sha256(good.read_bytes()).hexdigest()[:8]
    named = tmp_path / f"net-{prefix}.pth"
    shutil.copy(good, named)
    check_name_hash(named)  # matches: no error
    forged = tmp_path / "alexnet-owt-7be5be79.pth"
    shutil.copy(good, forged)
    with pytest.raises(WeightsTampered, match="7be5be79"):
        check_name_hash(forged)
    with guarded_loads(), pytest.raises(WeightsTampered):
        torch.load(forged)


@pytest.mark.slow
def test_metrics_check_with_crafted_weights_runs_no_code(tmp_path):
    """The shape of the report: two crafted files in the weights folder; `check` must not run them
    and must not call the metric ok. The genuine stlpips weights still load weights-only."""
    pytest.importorskip("pyiqa")
    weights = tmp_path / "weights"
    marker = tmp_path / "ran"
    crafted(weights / "pyiqa" / "alex_shift_tolerant.pth", marker)
    crafted(weights / "checkpoints" / "alexnet-owt-7be5be79.pth", marker)  # torchvision's backbone for lpips
    stlpips = load_metric("stlpips", weights, torch.device("cpu"))
    assert stlpips.status == "error" and "unpickle" in stlpips.error, stlpips
    lpips = load_metric("lpips", weights, torch.device("cpu"))
    assert lpips.status == "error" and "7be5be79" in lpips.error, lpips
    assert not marker.exists()

    # the genuine file, seeded offline from stlpips-pytorch (what `make weights` does; NIQE not needed)
    from evaluation.metrics import seed_weights

    report = seed_weights(tmp_path / "genuine", None, download_sdist=False)
    assert report["alex_shift_tolerant.pth"] == "ok", report
    real = tmp_path / "genuine" / "pyiqa" / "alex_shift_tolerant.pth"
    shutil.copy(real, weights / "pyiqa" / real.name)
    m = load_metric("stlpips", weights, torch.device("cpu"))
    assert m.status == "ok", m.error


def _scripted(path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def test_torchscript_archives_are_refused_by_path_and_by_stream(tmp_path):
    """A TorchScript archive carries code that runs as it loads (pyiqa reads CLIP and ARNIQA's regressor
    with torch.jit.load): refused under guarded_loads, both through torch.jit.load and through
    torch.load's own dispatch to it; its state dict, saved by the user, loads."""
    jit = tmp_path / "ViT-B-32.pt"
    _scripted(jit)
    with guarded_loads():
        with pytest.raises(TorchScriptRefused, match="ViT-B-32.pt.*TorchScript"):
            torch.jit.load(str(jit))
        with open(jit, "rb") as f:  # pyiqa's clip loader: jit.load(file), then torch.load(file) on failure
            with pytest.raises(TorchScriptRefused):
                torch.jit.load(f)
            with pytest.raises(TorchScriptRefused):
                torch.load(f, map_location="cpu")
    assert isinstance(torch.jit.load(str(jit)), torch.jit.ScriptModule)  # restored after the block
    torch.save(torch.jit.load(str(jit)).state_dict(), jit)  # the README's conversion
    with guarded_loads():
        assert set(torch.load(jit)) == {"weight", "bias"}


def test_is_torchscript_tells_archives_apart(tmp_path):
    _scripted(tmp_path / "a.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(b"not a zip")
    assert is_torchscript(tmp_path / "a.pt")
    assert not is_torchscript(tmp_path / "b.pt")
    assert not is_torchscript(tmp_path / "c.pt")
    with open(tmp_path / "a.pt", "rb") as f:
        f.seek(3)
        assert is_torchscript(f) and f.tell() == 3


def test_pyiqa_clip_loader_refuses_a_torchscript_file(tmp_path):
    """pyiqa's CLIP loader (clipiqa, clipscore) reads the file with torch.jit.load and falls back to
    torch.load on a RuntimeError: under guarded_loads both refuse, naming the file."""
    from pyiqa.archs.clip_model import load as clip_load

    _scripted(tmp_path / "RN50.pt")
    with guarded_loads(), pytest.raises(TorchScriptRefused, match="RN50.pt"):
        clip_load(str(tmp_path / "RN50.pt"), device="cpu")
