"""Helpers for running real multirun sweeps (`sweep-run -m`) in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import FAST

GRID = ["model=toy_vit,toy_clip", "layer=3,4,5", "intervention=none,shuffle", "readout=native", "seed=0"]


def multirun(args, env, cwd, timeout=600, background=False, **popen):
    command = [sys.executable, "-m", "sweep.run", "-m", *FAST, *args]
    if background:
        return subprocess.Popen(command, env=env, cwd=cwd, text=True, **popen)
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def records(sweep_dir: Path) -> dict[str, dict]:
    """cell_id -> the parts of the record that must not depend on how the cell was run."""
    found = {}
    for path in sweep_dir.rglob("result.json"):
        record = json.loads(path.read_text())
        found[record["cell_id"]] = {k: record.get(k) for k in ("name", "status", "metrics", "counts")}
    return found
