"""bench/ scripts run the way a user runs them (tests never import a bench script)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.support import ROOT


def run_bench(script: str, *args: str, timeout: int = 600, **env: str) -> str:
    """The stdout of ``python bench/<script> <args>`` from the checkout root; fails the test with the
    end of its stderr when the script fails. ``env``: variables set for it."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **env)
    r = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=full_env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"bench/{script} {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    return r.stdout


def json_lines(stdout: str) -> list[dict]:
    """A bench's JSON lines (one object per line)."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def last_json(stdout: str) -> dict:
    """The indented JSON object a bench prints last (its opening brace alone on a line)."""
    starts = [m.start() for m in re.finditer(r"^\{$", stdout, flags=re.M)]
    assert starts, f"no JSON object in the output:\n{stdout[-2000:]}"
    return json.loads(stdout[starts[-1]:])
