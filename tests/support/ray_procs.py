"""Ray clusters that tests start in other processes (`ray start`, `ray job submit`, a pipeline's
CLI), ended by process id. In-process clusters come from conftest's ``ray_local`` fixture.

`ray stop --force` would end every Ray process on the machine, other users' clusters too; these
helpers end only the processes of one cluster, found by its private temp dir (``--temp-dir`` for
`ray start`, ``RAY_TMPDIR`` for a driver's ``ray.init``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

from tests.support import ROOT

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_ray_pids(temp_dir: str) -> list[int]:
    """Processes of this test's cluster: their command line or an open file names its private temp dir.

    (Ray's agents rename their process title, so the command line alone misses them.)
    """
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            mine = temp_dir in (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not mine:
                for fd in (p / "fd").iterdir():
                    try:
                        if os.readlink(fd).startswith(temp_dir):
                            mine = True
                            break
                    except OSError:
                        continue
        except OSError:
            continue
        if mine:
            pids.append(int(p.name))
    return pids


def stop_own_ray(temp_dir: str) -> None:
    """SIGTERM, then SIGKILL, every process of the cluster under ``temp_dir``; remove the dir."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _own_ray_pids(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids and sig == signal.SIGTERM:
            time.sleep(3)
    shutil.rmtree(temp_dir, ignore_errors=True)


def job_env() -> dict[str, str]:
    """The environment of a pipeline run in a subprocess: this checkout importable, the venv's python
    first on PATH (`ray job submit -- python ...` runs the job's `python`), no hub, and no tracking
    URI or Ray address inherited from the caller."""
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="0", PATH=path)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return env


class Head(NamedTuple):
    address: str  # the GCS, for `ray start --address` and ray.init
    dashboard: str  # http://..., for `ray job submit --address`


@contextlib.contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2, dashboard: bool = True, prefix: str = "rh") -> Iterator[Head]:
    """`ray start --head` on free ports with a private temp dir (short: Ray's unix sockets live under
    it); afterwards every process of that cluster (nodes that joined it too) ends by process id."""
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        start = subprocess.run(RAY + ["start", "--head", f"--port={port}", f"--dashboard-port={dash}",
                                      f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
                                      f"--include-dashboard={str(dashboard).lower()}", "--disable-usage-stats"],
                               env=env, capture_output=True, text=True, timeout=240)
        assert start.returncode == 0, f"ray start --head failed: {start.stderr[-3000:]}"
        yield Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}")
    finally:
        stop_own_ray(temp_dir)
