"""Progress bars that show rate and ETA on a terminal and stay quiet in logs."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when stderr is not a terminal (SLURM logs, CI) unless
    SWEEP_PROGRESS=1 forces it on (SWEEP_PROGRESS=0 forces it off)."""
    forced = os.environ.get("SWEEP_PROGRESS")
    enabled = sys.stderr.isatty() if forced is None else forced == "1"
    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)
