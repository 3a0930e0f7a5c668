"""Ray clusters that tests start, ended by process id.

`ray stop --force` would end every Ray process on the machine, other users' clusters too; these
helpers end only the processes of one cluster, found by its private temp dir (``--temp-dir`` for
`ray start`, ``RAY_TMPDIR`` for a driver's ``ray.init``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path


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
