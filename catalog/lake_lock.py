"""One writer per lake: ``with lake_lock(lake, run_id): ...`` around a pipeline run.

Two runs on one lake would resume each other's half-written tables, or clear them mid-run. The
lock is ``<root>/_lock.json`` holding the run id, host, pid and start time, created exclusively
(``O_EXCL`` on a local lake; on an object store, written and read back, which narrows but cannot
close the race, as object stores offer no exclusive create). A second run fails at once with a
:class:`LakeLocked` error that names the holder. A lock left by a dead process on this host (a
killed run) is taken over with a warning; one from another host is never guessed dead: the
message says which file to delete.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
import uuid
from typing import Iterator

import pyarrow.fs as pafs

from catalog.lake import Lake, LakeError

log = logging.getLogger(__name__)
LOCK = "_lock.json"


class LakeLocked(LakeError):
    """Another run holds the lake."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(lake: Lake, path: str) -> dict | None:
    try:
        with lake.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"run_id": "?", "note": "unreadable lock file"}


def _create(lake: Lake, path: str, body: bytes) -> bool:
    """Create the lock file if it does not exist; True when this call created it."""
    if lake.local:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return True
    if lake.fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    with lake.fs.open_output_stream(path) as f:
        f.write(body)
    with lake.fs.open_input_stream(path) as f:  # read back: the last writer of a race wins, the other backs off
        return f.read() == body


@contextlib.contextmanager
def lake_lock(lake: Lake, run_id: str | None = None) -> Iterator[str]:
    """Hold the lake for one run; yields the run id written in the lock."""
    run_id = run_id or uuid.uuid4().hex[:12]
    path = f"{lake.base.rstrip('/')}/{LOCK}"
    me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
          "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), "argv": sys.argv[:8]}
    body = json.dumps(me, indent=2).encode()
    for _ in range(2):
        if _create(lake, path, body):
            break
        held = _holder(lake, path)
        if held is None:
            continue  # released between the two calls
        stale = held.get("host") == me["host"] and isinstance(held.get("pid"), int) and not _alive(held["pid"])
        if not stale:
            raise LakeLocked(
                f"lake {lake.root!r} is in use by run {held.get('run_id')} (host {held.get('host')}, pid "
                f"{held.get('pid')}, since {held.get('started_at')}); one writer per lake: wait for it to finish, "
                f"use another lake, or delete {path} if that run is dead")
        log.warning("lake %s: taking over the lock of dead run %s (pid %s)", lake.root, held.get("run_id"), held.get("pid"))
        lake.fs.delete_file(path)
    else:
        raise LakeLocked(f"lake {lake.root!r}: could not take the lock {path}")
    try:
        yield run_id
    finally:
        if (_holder(lake, path) or {}).get("run_id") == run_id:
            lake.fs.delete_file(path)
