"""Shared test setup: offline hub, quiet logs, markers, the photos, one module-scoped Ray fixture
(``ray_local``). Helper modules live in tests/support/."""
import os

# Without these some loaders hang retrying the hub (this machine has no hub access).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import pytest
import torch

from tests.support import ROOT, photo_paths

# Tiny models run fastest on one thread; on a shared 2-core box more threads mostly contend.
torch.set_num_threads(1)


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


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster for this test module, shut down after it: 2 CPUs, started the way the
    pipelines start one (pipelines.common.init_ray: address "local", never another session's
    cluster; workers import this checkout, quiet logs, no progress bars), without the dashboard
    and without worker output in the test's. Yields its RayConfig.

    A pipeline function a test calls under it (run_train, run_negatives, ...) calls init_ray
    itself, which keeps an initialized cluster: it runs on this one. This checkout is on
    PYTHONPATH meanwhile, so a pipeline CLI the test starts with RAY_ADDRESS set to this cluster
    imports it too. Tests that need Ray in other processes (`ray start`, `ray job submit`) use
    tests/support/ray_procs.py instead."""
    import os

    import ray

    from pipelines.common import init_ray
    from pipelines.config import RayConfig

    assert not ray.is_initialized(), "Ray is already initialized in this process: ray_local would not own it"
    cfg = RayConfig(num_cpus=2, progress_bars=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)  # a cluster of our own, not the one a caller points at
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        init_ray(cfg, include_dashboard=False, log_to_driver=False)
        try:
            yield cfg
        finally:
            ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _ray_shut_down_after_each_module():
    """A module that started Ray in this process without ray_local (a pipeline function it calls
    starts one) leaves no cluster behind for the next module."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
