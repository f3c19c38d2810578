"""What state a cell is in, read from its folder alone: the one definition that the
planner (what to launch), `sweep-status` and `sweep-aggregate` (what is missing) share.

done     — result.json with status "complete" (of this cell: its cell_id matches)
running  — no complete record, and a live owner holds its lease (started.json, sweep.lease):
           launching it again would measure it twice
failed   — result.json with status "failed" (error and traceback inside); re-launching runs it
corrupt  — result.json that cannot be parsed; re-launching recomputes it
killed   — no record, and its lease's owner is dead: its process is gone on this host (a
           zombie counts as gone), its SLURM job left the queue, or its heartbeat is stale
pending  — nothing yet (or a lease given up without a record, e.g. after bad input)

A complete record wins over a lease (a finished cell releases its lease right after), and a
live lease wins over a failed or corrupt record (another launch is re-running the cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.layout import CellPaths
from sweep.lease import describe, read_lease, why_free
from sweep.record import read_record

STATES = ("done", "running", "failed", "corrupt", "killed", "pending")


@dataclass(frozen=True)
class CellState:
    state: str
    record: dict[str, Any] | None  # this cell's record, if it has one
    lease: dict[str, Any] | None
    live: bool = False  # a live owner holds the lease (also beside a complete record)

    @property
    def owner(self) -> str | None:
        """Who holds the cell's lease now, as a person reads it; None when nobody lives."""
        return describe(self.lease) if self.live and self.lease else None


def read_state(folder: Path, cell_id: str | None = None) -> CellState:
    """`cell_id`: the cell the folder should hold; a record of another cell does not count
    (None: whichever cell the record names)."""
    paths = CellPaths(Path(folder))
    record = read_record(paths.folder)
    if record is not None and cell_id is not None and record.get("cell_id") != cell_id:
        record = None
    lease = read_lease(paths.folder)
    live = lease is not None and why_free(lease) is None
    if record is not None and record.get("status") == "complete":
        return CellState("done", record, lease, live)
    if live:
        return CellState("running", record, lease, live)
    if record is not None:
        return CellState("failed", record, lease)
    if paths.record.exists() and read_record(paths.folder) is None:
        return CellState("corrupt", None, lease)
    if lease is not None and lease.get("released") is None:
        return CellState("killed", None, lease)
    return CellState("pending", None, lease)


def cell_state(folder: Path, cell_id: str | None = None) -> str:
    return read_state(folder, cell_id).state


def stale_progress(folder: Path, cell_id: str | None = None) -> Path | None:
    """A complete cell's checkpoint that no live owner holds: a kill between writing the
    record and removing the checkpoint leaves one behind, and nothing would ever resume it."""
    progress = CellPaths(Path(folder)).progress
    if not progress.exists():
        return None
    state = read_state(folder, cell_id)
    return progress if state.state == "done" and not state.live else None
