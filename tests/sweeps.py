"""Helpers for running real multirun sweeps (`sweep-run -m`) in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import FAST

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


def checkpointed_rows(sweep_dir) -> dict[str, int]:
    """Per intervened cell without a record: the validation rows its progress file holds
    (0 without one)."""
    from safetensors import safe_open

    rows = {}
    for cell in sweep_dir.glob("toy_vit/*-shuffle-*"):
        if not (cell / "result.json").exists():
            rows[cell.name] = 0
            if (cell / "progress.safetensors").exists():
                with safe_open(cell / "progress.safetensors", framework="pt") as f:
                    rows[cell.name] = int(f.metadata()["rows"])
    return rows


def fresh(paths, since: float) -> int:
    """How many of `paths` were written after `since`."""
    count = 0
    for path in paths:
        try:
            count += path.stat().st_mtime >= since
        except FileNotFoundError:  # replaced or removed meanwhile
            pass
    return count
