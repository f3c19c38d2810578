"""Every path of a sweep folder and of a cell folder, in one place (submitit's `JobPaths` is
the model): the planner, the cells, `sweep-status` and `sweep-aggregate` all ask here.

    multirun/<sweep id>/
        plan.json                       the sweep's planned cells (written at launch)
        <model>/<cell name>-<id8>/      one cell
            result.json                 its record, written atomically and last
            outcomes.csv                per-example outcomes
            started.json                its lease (who runs it; sweep.lease)
            progress.safetensors        a running unit's checkpoint of the cell; never a record
            wandb/                      its W&B run
        units/<unit id>/                one work unit (one Hydra job, one SLURM array task)
            unit.json                   its cells
            summary.json                what it ran, written when it ends
            *.log, .hydra/              Hydra's

A single `sweep-run` (no `-m`) writes a cell folder of the same layout under `runs/`.
Torch-free, and free of every other sweep module: they all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULT_FILE = "result.json"
OUTCOMES_FILE = "outcomes.csv"
LEASE_FILE = "started.json"
PROGRESS_FILE = "progress.safetensors"
PLAN_FILE = "plan.json"
UNITS_DIR = "units"
UNIT_FILE = "unit.json"
UNIT_SUMMARY = "summary.json"


@dataclass(frozen=True)
class CellPaths:
    folder: Path

    @property
    def record(self) -> Path:
        return self.folder / RESULT_FILE

    @property
    def outcomes(self) -> Path:
        return self.folder / OUTCOMES_FILE

    @property
    def lease(self) -> Path:
        return self.folder / LEASE_FILE

    @property
    def progress(self) -> Path:
        return self.folder / PROGRESS_FILE

    def own_logs(self) -> list[Path]:
        """A single `sweep-run`'s log; in a sweep the logs are its unit's."""
        return sorted(self.folder.glob("*.log"))


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def plan(self) -> Path:
        return self.root / PLAN_FILE

    def cell(self, subdir: str | Path) -> CellPaths:
        """`subdir`: the cell spec's `<model>/<cell name>-<id8>`."""
        return CellPaths(self.root / subdir)

    def record_files(self) -> list[Path]:
        """Every cell's result.json in this sweep, in folder order."""
        return sorted(self.root.glob(f"*/*/{RESULT_FILE}"))

    def cell_folders(self) -> list[Path]:
        """Every folder where a cell wrote a record or took a lease."""
        return sorted({p.parent for name in (RESULT_FILE, LEASE_FILE) for p in self.root.glob(f"*/*/{name}")})

    def unit_dir(self, unit_id: str) -> Path:
        return self.root / UNITS_DIR / unit_id

    def unit_file(self, unit_id: str) -> Path:
        return self.unit_dir(unit_id) / UNIT_FILE

    def unit_summary(self, unit_id: str) -> Path:
        return self.unit_dir(unit_id) / UNIT_SUMMARY

    def unit_files(self) -> list[Path]:
        return list(self.root.glob(f"{UNITS_DIR}/*/{UNIT_FILE}"))

    def why_not_a_sweep(self) -> str | None:
        """Why this folder holds no sweep, naming the folder that was likely meant, or None."""
        folder = self.root
        if self.plan.exists() or self.cell_folders():
            return None
        if (folder / RESULT_FILE).exists():
            return f"{folder} is one cell's folder; give its sweep folder (two levels up: {folder.parent.parent})"
        if next(folder.glob(f"*/{RESULT_FILE}"), None) is not None:
            return f"{folder} holds one model's cells; give the sweep folder (one level up: {folder.parent})"
        inner = sorted({p.parents[2] for p in folder.glob(f"*/*/*/{RESULT_FILE}")})
        if inner:
            return f"{folder} holds several sweeps; give one of: {', '.join(str(p) for p in inner[:5])}"
        return (
            f"{folder} has no cell records (<model>/<cell>/{RESULT_FILE}) and no {PLAN_FILE}; sweeps live in "
            "multirun/<sweep id>"
        )


def records_under(folder: Path) -> list[Path]:
    """Every result.json at any depth below `folder` (sweep.results_from may name a sweep,
    or a folder of sweeps)."""
    return sorted(Path(folder).rglob(RESULT_FILE))
