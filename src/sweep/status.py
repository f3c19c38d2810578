"""`sweep-status`: what state each cell of a sweep is in (`sweep.cell_state`), read from
its folder alone, and what each work unit did.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sweep.cell_state import cell_state, read_state
from sweep.cli import Command, Setting, UsageError
from sweep.errors import first_line
from sweep.layout import RESULT_FILE, CellPaths, SweepPaths
from sweep.plan import UnreadablePlan, read_plan_file, record_folder
from sweep.record import read_record
from sweep.rules import Flag


def log_files(cell_dir: Path) -> list[Path]:
    """The logs that tell what happened to a cell: its own folder's (a single `sweep-run`),
    else its work unit's (units/<id>/*.log in the sweep folder, named by its record)."""
    own = CellPaths(cell_dir).own_logs()
    unit = (read_record(cell_dir) or {}).get("unit")
    return own + (sorted(SweepPaths(cell_dir.parent.parent).unit_dir(unit).glob("*.log")) if unit else [])


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    failed: list[tuple[str, Path, str]] = field(default_factory=list)
    missing: list[tuple[str, Path, str]] = field(default_factory=list)
    corrupt: list[tuple[str, Path]] = field(default_factory=list)
    running: list[tuple[str, Path, str]] = field(default_factory=list)  # name, folder, who holds the lease

    def text(self) -> str:
        total = sum(self.counts.values())
        lines = [f"{total} cells: " + ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items()))]
        for name, folder, why in self.failed:
            logs = ", ".join(str(p) for p in log_files(folder)) or "no log file"
            lines.append(f"  FAILED  {name}: {why}\n          folder {folder}\n          log    {logs}")
        for name, folder in self.corrupt:
            lines.append(f"  CORRUPT {name}: {folder / RESULT_FILE} cannot be parsed — re-launching recomputes it")
        for name, folder, owner in self.running:
            lines.append(f"  RUNNING {name}: held by {owner} — not run again while it lives ({folder})")
        for name, folder, state in self.missing:
            lines.append(f"  {state.upper():<7} {name}: no record — re-launch the same command to run it ({folder})")
        if self.failed or self.missing or self.corrupt:
            lines.append("re-launching the same command runs only the cells that are not done or running")
        return "\n".join(lines)


def summarise_cells(
    cells: Iterable[tuple[object, Path]], *, finished: bool = False, errors: dict[str, str] | None = None
) -> Summary:
    """`cells`: (spec with .name and .cell_id, folder) pairs. `finished`: the launcher has
    returned, so a cell without a record crashed rather than still runs — unless a live
    lease says another launch runs it. `errors`: what the launcher reported per cell name
    (e.g. bad input, which leaves no record)."""
    summary = Summary()
    errors = errors or {}
    for spec, folder in cells:
        found = read_state(folder, getattr(spec, "cell_id", None))
        state = found.state
        if finished and state in ("killed", "pending"):
            state = "failed" if spec.name in errors else "crashed"
        summary.counts[state] += 1
        if state == "failed" and found.record is None:
            summary.failed.append((spec.name, folder, errors[spec.name]))
        elif state == "failed":
            summary.failed.append((spec.name, folder, first_line(found.record.get("error"), 300)))
        elif state == "corrupt":
            summary.corrupt.append((spec.name, folder))
        elif state == "running":
            summary.running.append((spec.name, folder, found.owner or "?"))
        elif state != "done":
            summary.missing.append((spec.name, folder, state))
    return summary


@dataclass(frozen=True)
class _Named:
    name: str
    cell_id: str


def sweep_cells(sweep_dir: Path) -> list[tuple[_Named, Path]]:
    """Every cell of the sweep: those of its plan (plan.json, the latest launch's, with the
    records it took from sweep.results_from), and every other cell folder in the sweep
    folder (earlier launches of other grids into the same sweep.name)."""
    paths = SweepPaths(sweep_dir)
    plan = read_plan_file(sweep_dir) or {"cells": []}
    planned = [(_Named(c["name"], c["cell_id"]), record_folder(sweep_dir, c)) for c in plan["cells"]]
    known = {folder.resolve() for _, folder in planned}
    others = [
        (_Named(f.name, (read_record(f) or {}).get("cell_id")), f)
        for f in paths.cell_folders()
        if f.resolve() not in known
    ]
    return planned + others


def compared_to(sweep_dir: Path, cells: list[tuple[_Named, Path]]) -> str:
    """Which plan the counts are compared to: a sweep folder holds every launch's cells, and
    plan.json only the latest launch's."""
    paths, plan = SweepPaths(sweep_dir), read_plan_file(sweep_dir)
    if plan is None:
        return f"no {paths.plan.name} in {sweep_dir}: counting the cell folders found there"
    planned = len(plan["cells"])
    extra = len(cells) - planned
    return f"compared to the latest launch's plan ({paths.plan}: {planned} cells)" + (
        f", and {extra} more cell folders from earlier launches" if extra else ""
    )


COMMAND = Command(
    prog="sweep-status",
    summary="The cells of a sweep by state (done / failed / corrupt / running / killed / pending), read from its "
    "folder alone, and the work units it launched.",
    words=(("<sweep folder>", "the sweep's folder, e.g. multirun/<sweep id>"),),
    settings={"cells": Setting(Flag(), False, "list every cell with its state")},
)


def main(argv: list[str] | None = None) -> None:
    try:
        parsed = COMMAND.parse(sys.argv[1:] if argv is None else argv)
        if parsed is None:
            print(COMMAND.usage())
            sys.exit(0)
        words, settings = parsed
        if not words:
            raise UsageError("which sweep? give its folder: sweep-status multirun/<sweep id>")
        sweep_dir = Path(words[0])
        if not sweep_dir.is_dir():
            raise UsageError(f"{sweep_dir} is not a folder; sweeps live in multirun/<sweep id>")
    except UsageError as error:
        print(f"sweep-status: error: {error}\n\n{COMMAND.usage()}", file=sys.stderr)
        sys.exit(2)
    try:
        cells = sweep_cells(sweep_dir)
    except UnreadablePlan as error:
        print(f"sweep-status: error: {error}", file=sys.stderr)
        sys.exit(1)
    if settings["cells"]:
        for spec, folder in cells:
            print(f"{cell_state(folder, spec.cell_id):<8} {spec.name}  {folder}")
    units = units_text(sweep_dir)
    if units:
        print(units)
    summary = summarise_cells(cells)
    print(compared_to(sweep_dir, cells))
    print(summary.text())
    sys.exit(0)


def units_text(sweep_dir: Path) -> str:
    """Each work unit launched in the sweep (newest launch last): its cells' states, and
    what it cost once it ended (its summary.json)."""
    from sweep.units import read_units

    lines, paths = [], SweepPaths(sweep_dir)
    for unit in read_units(sweep_dir):
        folder = paths.unit_dir(unit["unit_id"])
        if unit["prepare"]:
            lines.append(f"  unit {unit['unit_id']}: prepares {unit['model']}'s artifacts")
            continue
        states = Counter(cell_state(sweep_dir / c["subdir"], c["cell_id"]) for c in unit["cells"])
        ended = ""
        if paths.unit_summary(unit["unit_id"]).exists():
            summary = json.loads(paths.unit_summary(unit["unit_id"]).read_text())
            ended = (
                f"; ran {summary['cells']} cells in {summary['wall_s']:.0f} s, "
                f"{summary['block_calls']:,} block applications"
            )
        lines.append(
            f"  unit {unit['unit_id']}: {unit['model']}, {len(unit['cells'])} cells: "
            + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            + ended
            + f"  (log: {folder / 'run.log'})"
        )
    return f"{len(lines)} work units launched:\n" + "\n".join(lines) if lines else ""


if __name__ == "__main__":
    main()
