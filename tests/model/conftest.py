"""Model tests run tiny models: one intra-op thread per test module (on a shared 2-core machine more
threads only fight each other, 40x slower), restored after the module."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
