"""The cell's record: `result.json` (documented in docs/results.md) and its outcomes file.

`result.json` is written atomically and last, so its presence with status "complete" is
what "this cell is done" means everywhere (resume, status, aggregation).
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sweep.cellspec import CellSpec
from sweep.files import atomic_write_json, atomic_write_text
from sweep.layout import OUTCOMES_FILE, RESULT_FILE

PACKAGES = ("sweep", "torch", "transformers", "datasets", "hydra-core", "submitit", "wandb", "scikit-learn", "numpy")


def read_record(cell_dir: Path) -> dict[str, Any] | None:
    """The cell's record, or None when there is none (or it cannot be parsed)."""
    try:
        return json.loads((cell_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(cell_dir: Path, cell_id: str) -> bool:
    record = read_record(cell_dir)
    return record is not None and record.get("status") == "complete" and record.get("cell_id") == cell_id


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    found["git_commit"] = _git_commit()
    return found


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cell_fields(spec: CellSpec, cfg: Mapping[str, Any], sweep_id: str | None) -> dict[str, Any]:
    """The record's identifying part, shared by complete and failed records."""
    return {
        "cell_id": spec.cell_id,
        "name": spec.name,
        "sweep_id": sweep_id,
        "model": spec.model,
        "layer": spec.layer,
        "n_layers": spec.n_layers,
        "intervention": spec.intervention,
        "readout": spec.readout,
        "seed": spec.seed,
        "config": {k: spec.science[k] for k in ("intervention", "probe", "data")},
    }


def write_outcomes(cell_dir: Path, outcomes: Mapping[str, Any]) -> None:
    columns = list(outcomes)
    rows = zip(*(outcomes[c].tolist() for c in columns))
    text = ",".join(["example", *columns]) + "\n" + "".join(
        ",".join(map(str, (i, *row))) + "\n" for i, row in enumerate(rows))
    atomic_write_text(cell_dir / OUTCOMES_FILE, text)


def write_record(cell_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(cell_dir / RESULT_FILE, record)
