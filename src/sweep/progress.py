"""Progress bars that show rate and ETA on a terminal and stay quiet in logs."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

#: values of tqdm's own switch, TQDM_DISABLE, that turn bars off (as tqdm reads a bool)
_TRUE = ("1", "true", "yes", "y", "on")


def progress_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar, disabled when stderr is not a terminal (SLURM logs, CI) unless
    SWEEP_PROGRESS=1 forces it on (SWEEP_PROGRESS=0 forces it off). tqdm's standard switch,
    TQDM_DISABLE=1, turns it off too: tqdm reads it only as a default, which the explicit
    `disable=` given here would otherwise override."""
    forced = os.environ.get("SWEEP_PROGRESS")
    enabled = sys.stderr.isatty() if forced is None else forced == "1"
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE:
        enabled = False
    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)
