"""Shared test setup: offline hub, quiet logs, markers, one module-scoped Ray fixture."""
import os

# Without these some loaders hang retrying the hub (this machine has no hub access).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from pathlib import Path

import pytest
import torch

# Tiny models run fastest on one thread; on a shared 2-core box more threads mostly contend.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
SAMPLES = ROOT / "data" / "samples"


def photo_paths():
    """Real photos for tests: ../shared/data/photos when present, else the shipped samples."""
    src = PHOTOS if PHOTOS.is_dir() else SAMPLES
    return sorted(src.glob("*.jpg"))


@pytest.fixture(scope="session")
def photos():
    paths = photo_paths()
    assert paths, "no test photos found"
    return paths


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _ray_shut_down_after_each_module():
    """A module that started Ray in this process (a pipeline function calls ray.init) leaves no
    cluster behind for the next module, whose fixture starts its own."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
