"""Data parallelism without Ray: 2 gloo processes, DDP and FSDP2 give the same losses, and an FSDP run
resumes from its (gathered, full) checkpoint exactly."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket

import pytest

pytestmark = pytest.mark.slow


class _Session:
    def __init__(self, rows, rank, world_size, root, resume_from=None):
        self._rows, self.rank, self.world_size, self.root, self.resume_from = rows, rank, world_size, root, resume_from

    def rows(self):
        from stages.train_data import shard_rows

        return shard_rows(self._rows, self.rank, self.world_size)

    @contextlib.contextmanager
    def checkpoint(self):
        yield self.resume_from

    def report(self, metrics, checkpoint_dir):
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, os.path.join(self.root, f"checkpoint_{metrics['step']}"), dirs_exist_ok=True)


def _worker(rank, world_size, port, rows, root, strategy, steps, resume_from, queue):
    import torch
    import torch.distributed as dist

    from model.config import ModelConfig
    from stages.train import TrainConfig, train_loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    cfg = TrainConfig(stage="adaptor", steps=steps, batch_size=2, lr=1e-3, crop_size=64, checkpoint_every=2,
                      progress=False, strategy=strategy)
    out = train_loop(cfg, ModelConfig(preset="tiny"), _Session(rows, rank, world_size, root, resume_from))
    if rank == 0:
        queue.put(out["losses"])
    dist.destroy_process_group()


def _run(rows, root, strategy, steps=4, resume_from=None):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(2, port, rows, str(root), strategy, steps, resume_from, queue), nprocs=2, join=True)
    return queue.get()


def test_fsdp_matches_ddp_and_resumes(tmp_path):
    from tests.support.train_helpers import make_pairs, sample_photos

    rows = make_pairs(sample_photos()[:4], gt_size=64).to_pylist()
    ddp = _run(rows, tmp_path / "ddp", "ddp")
    fsdp = _run(rows, tmp_path / "fsdp", "fsdp")
    assert sorted(fsdp) == [1, 2, 3, 4]
    for k in ddp:
        assert fsdp[k] == pytest.approx(ddp[k], rel=1e-5)
    assert (tmp_path / "fsdp" / "checkpoint_2" / "model" / "adaptor" / "diffusion_pytorch_model.safetensors").is_file()
    resumed = _run(rows, tmp_path / "resumed", "fsdp", resume_from=str(tmp_path / "fsdp" / "checkpoint_2"))
    assert sorted(resumed) == [3, 4]
    for k in resumed:
        assert resumed[k] == pytest.approx(fsdp[k], rel=1e-5)
