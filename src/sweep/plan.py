"""Planning a sweep: the grid's cells, which are impossible, done, or still to run.

Torch-free and fast: the config is composed once per distinct set of config-group
choices, and value overrides (layer, seed, ...) are applied to plain dicts, so a
10,000-cell plan takes seconds. The cell recomputes its identity from its real config,
so the plan only decides what to launch, never what a record means.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.cell_state import read_state
from sweep.cellspec import CellSpec, NotApplicable, cell_spec, is_scientific
from sweep.errors import ConfigError, SweepError
from sweep.files import atomic_write_json
from sweep.interventions import INTERVENTIONS
from sweep.layout import SweepPaths, records_under
from sweep.record import read_record

SHOWN_RUNNING = 10  # cells running elsewhere listed by name in the plan


@dataclass(frozen=True)
class Dimension:
    """One swept (or fixed) override: its key, and per value the override string and value."""

    key: str
    is_group: bool
    strings: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass
class PlannedCell:
    overrides: list[str]
    config: dict[str, Any] = field(default_factory=dict)  # the composed config, resolved (sweep.units groups by it)
    spec: CellSpec | None = None
    skipped: str | None = None  # why it cannot run (layer the model lacks, readout it lacks)
    done_at: Path | None = None  # folder of a complete record
    running: str | None = None  # who holds its lease (another launch, a SLURM job): not launched


@dataclass
class Plan:
    sweep_id: str
    sweep_dir: Path
    cells: list[PlannedCell] = field(default_factory=list)
    #: grid points that name a cell already planned: over seeds, of an intervention that draws
    #: no random numbers (its identity has no seed), or where two grids of a union overlap
    merged_seedless: int = 0
    merged_overlap: int = 0

    @property
    def runnable(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.spec is not None]

    @property
    def done(self) -> list[PlannedCell]:
        return [c for c in self.runnable if c.done_at is not None]

    @property
    def running(self) -> list[PlannedCell]:
        return [c for c in self.runnable if c.done_at is None and c.running is not None]

    @property
    def pending(self) -> list[PlannedCell]:
        return [c for c in self.runnable if c.done_at is None and c.running is None]

    @property
    def skipped(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.skipped is not None]


def derive_sweep_id(name: str | None, experiment: str | None, overrides: Iterable[str]) -> str:
    """`sweep.name` if set; else the experiment's name and a hash of the overrides of a
    cell's identity (`cellspec.SCIENCE`), so re-launching the same command resumes the same
    sweep, and changing how it runs does too."""
    if name:
        return str(name)
    scientific = sorted(o for o in overrides if is_scientific(o.partition("=")[0]))
    digest = hashlib.sha256(json.dumps(scientific).encode()).hexdigest()[:8]
    return f"{experiment or 'sweep'}-{digest}"


def expand(dimensions: Sequence[Dimension]) -> Iterable[tuple[list[str], tuple[str, ...], dict[str, Any]]]:
    """Cartesian product: per cell its override strings, group choices and value overrides."""
    for combo in itertools.product(*(range(len(d.strings)) for d in dimensions)):
        strings = [d.strings[i] for d, i in zip(dimensions, combo)]
        groups = tuple(sorted(d.strings[i] for d, i in zip(dimensions, combo) if d.is_group))
        values = {d.key: d.values[i] for d, i in zip(dimensions, combo) if not d.is_group}
        yield strings, groups, values


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in `cfg`, copying only the dicts on that path (the rest is shared with
    the composed base, which must stay untouched)."""
    node = cfg
    *parents, leaf = key.lstrip("+").split(".")
    for part in parents:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    if key.startswith("~"):
        node.pop(leaf.lstrip("~"), None)
    else:
        node[leaf] = value


def index_results(folders: Iterable[str | Path]) -> dict[str, Path]:
    """cell_id -> folder, for every complete record under `folders` (sweep.results_from).
    Two different records of one cell are refused, naming both: which one counted would
    otherwise depend on the order of the folders. (The same record reached twice, through
    a folder and its parent, or a copy of it, is one record.)"""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"sweep.results_from names {root}, which is not a folder")
        for path in records_under(root):
            record = read_record(path.parent)
            if not record or record.get("status") != "complete":
                continue
            cell_id = str(record["cell_id"])
            if (
                cell_id in found
                and found[cell_id][1] != record
                and found[cell_id][0].resolve() != path.parent.resolve()
            ):
                raise ConfigError(
                    f"sweep.results_from holds two different records of cell {record.get('name', cell_id)} "
                    f"({cell_id}): {found[cell_id][0]} and {path.parent}; keep one (remove the other's folder from "
                    "sweep.results_from, or its record)"
                )
            found.setdefault(cell_id, (path.parent, record))
    return {cell_id: folder for cell_id, (folder, _) in found.items()}


class GroupComposer:
    """Composes a config per combination of group choices from one composition per
    (group, option): Hydra's composition costs ~0.15 s, and a grid has many combinations
    but few options. An option that changes anything outside its own node (a global
    package, say) makes its combinations fall back to a full composition."""

    def __init__(self, compose: Callable[[tuple[str, ...]], dict[str, Any]]) -> None:
        self._compose = compose
        self._full: dict[tuple[str, ...], dict[str, Any]] = {}
        self._base: tuple[tuple[str, ...], dict[str, Any]] | None = None
        self._variants: dict[tuple[int, str], dict[str, Any] | None] = {}

    def __call__(self, groups: tuple[str, ...]) -> dict[str, Any]:
        if self._base is None or len(self._base[0]) != len(groups):
            self._base = (groups, self._compose(groups))
        base_groups, base = self._base
        cfg = dict(base)
        for position, (choice, base_choice) in enumerate(zip(groups, base_groups)):
            if choice == base_choice:
                continue
            node = self._variant(position, choice, base_groups, base)
            if node is None:
                return self._full_composition(groups)
            cfg[_group_node(choice)] = node
        return cfg

    def _variant(
        self, position: int, choice: str, base_groups: tuple[str, ...], base: dict[str, Any]
    ) -> dict[str, Any] | None:
        if (position, choice) not in self._variants:
            groups = base_groups[:position] + (choice,) + base_groups[position + 1 :]
            variant, key = self._compose(groups), _group_node(choice)
            contained = all(variant.get(k) == base.get(k) for k in set(variant) | set(base) if k != key)
            self._variants[(position, choice)] = variant.get(key) if contained else None
        return self._variants[(position, choice)]

    def _full_composition(self, groups: tuple[str, ...]) -> dict[str, Any]:
        if groups not in self._full:
            self._full[groups] = self._compose(groups)
        return self._full[groups]


def _group_node(choice: str) -> str:
    """`model=vit` -> `model`; `data@toy_training.data=x` -> `toy_training` (whole node)."""
    key = choice.split("=", 1)[0].lstrip("+~")
    key = key.split("@", 1)[1] if "@" in key else key
    return key.split("/")[-1].split(".")[0]


def make_plan(
    grids: Sequence[Sequence[Dimension]],
    compose: Callable[[tuple[str, ...]], dict[str, Any]],
    sweep_id: str,
    sweep_dir: Path,
    results_from: Iterable[str | Path],
    *,
    force: bool = False,
) -> Plan:
    """Decide for every point of the union of `grids`: skipped (and why), done (and where),
    running (a live owner holds its lease: launching it again would measure it twice), or
    pending. A cell that two grids share is planned once. `force` (sweep.force): complete
    records do not count, every cell without a live lease is pending."""
    plan = Plan(sweep_id, sweep_dir)
    bases: dict[tuple[str, ...], dict[str, Any]] = {}
    elsewhere = index_results(results_from)
    seen: dict[str, Any] = {}  # cell_id -> the seed of the grid point that planned it
    points = itertools.chain.from_iterable(expand(dimensions) for dimensions in grids)
    for strings, groups, values in points:
        if groups not in bases:
            bases[groups] = compose(groups)
        cfg = dict(bases[groups])
        for key, value in values.items():
            set_dotted(cfg, key, value)
        cell = PlannedCell(overrides=strings, config=cfg)
        try:
            cell.spec = cell_spec(cfg)
        except NotApplicable as reason:
            cell.skipped = str(reason)
        except SweepError as error:  # a bad setting stops the whole plan: nothing is launched
            raise type(error)(f"{error}\n  (grid point: {' '.join(strings)})") from None
        else:
            if cell.spec.cell_id in seen:
                if cell.spec.seed is None and values.get("seed") not in (None, seen[cell.spec.cell_id]):
                    plan.merged_seedless += 1
                else:
                    plan.merged_overlap += 1
                continue
            seen[cell.spec.cell_id] = values.get("seed")
            here = sweep_dir / cell.spec.subdir
            state = read_state(here, cell.spec.cell_id)
            if not force and state.state == "done":
                cell.done_at = here
            elif not force and cell.spec.cell_id in elsewhere:
                cell.done_at = elsewhere[cell.spec.cell_id]
            elif state.live:
                cell.running = state.owner
        plan.cells.append(cell)
    if plan.cells and not plan.runnable:
        reasons = Counter(c.skipped for c in plan.skipped)
        raise SweepError(
            "no cell of this sweep can run:\n  "
            + "\n  ".join(f"{n} × {reason}" for reason, n in reasons.most_common(5))
        )
    return plan


def describe(plan: Plan, units: Sequence[Any], *, dry_run: bool) -> str:
    """The plan as a person reads it: counts, skipped reasons, per model what runs, and
    the work units (sweep.units) that will run it."""
    points = len(plan.cells) + plan.merged_seedless + plan.merged_overlap
    lines = [
        f"sweep {plan.sweep_id}: {points} grid points -> {len(plan.runnable)} cells, "
        f"{len(plan.done)} already done, "
        + (f"{len(plan.running)} running elsewhere, " if plan.running else "")
        + f"{len(plan.pending)} to run in {len(units)} work units  ({plan.sweep_dir})"
    ]
    if plan.merged_seedless:
        seedless = ", ".join(name for name, intervention in INTERVENTIONS.items() if not intervention.seeded)
        lines.append(
            f"  merged {plan.merged_seedless} grid points that differ only in a seed their intervention does "
            f"not use ({seedless} draw no random numbers): each such cell is measured once"
        )
    if plan.merged_overlap:
        lines.append(f"  merged {plan.merged_overlap} grid points that the grids of the union share")
    reasons = Counter(c.skipped for c in plan.skipped)
    for reason, n in reasons.most_common():
        lines.append(f"  skipped {n}: {reason}")
    per_model: dict[str, Counter] = {}
    for cell in plan.runnable:
        assert cell.spec is not None
        counts = per_model.setdefault(cell.spec.model, Counter())
        counts["cells"] += 1
        counts["done"] += cell.done_at is not None
        counts["running"] += cell.done_at is None and cell.running is not None
    for unit in units:
        per_model[unit.model]["units"] += 1
        per_model[unit.model]["cost"] += unit.cost
    if per_model:
        lines.append(
            f"  {'model':<14}{'cells':>7}{'done':>7}{'to run':>8}{'units':>7}{'block applications per val image':>36}"
        )
        for model, c in per_model.items():
            lines.append(
                f"  {model:<14}{c['cells']:>7}{c['done']:>7}{c['cells'] - c['done'] - c['running']:>8}"
                f"{c['units']:>7}{c['cost']:>36}"
            )
        lines.append(
            "  (cost: each unit runs the unmodified prefix once per validation batch, up to its deepest "
            "intervened layer, and blocks L+1..N once per distinct layer, intervention and seed (a shuffle "
            "of another token than the CLS adds its donors' prefix once per seed); a model's "
            "unmodified pass over train+val runs once per model and data, shared through the cache)"
        )
    for cell in plan.running[:SHOWN_RUNNING]:
        lines.append(f"  running elsewhere, not launched: {cell.spec.name} ({cell.running})")
    if len(plan.running) > SHOWN_RUNNING:
        lines.append(f"  ... and {len(plan.running) - SHOWN_RUNNING} more running elsewhere (sweep-status lists them)")
    if dry_run:
        lines.append("  work units to run (one Hydra job, one SLURM array task each), and their cells:")
        for unit in units:
            lines.append(f"  unit {unit.describe()}")
            lines.extend(f"    {c.spec.name}  [{' '.join(c.overrides)}]" for c in unit.cells)
        lines.append("dry run: nothing launched (drop sweep.dry_run=true to run)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plan.json

# The planner's record of a sweep's latest launch, `<sweep>/plan.json`: written here at
# launch, read (through `read_plan_file`) by sweep-status and sweep-aggregate.


class UnreadablePlan(SweepError):
    """plan.json exists but cannot be read or parsed."""


def read_plan_file(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's plan.json, or None where a sweep has none (launched before it existed)."""
    path = SweepPaths(sweep_dir).plan
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UnreadablePlan(f"cannot read {path}: {error}") from error


def record_folder(sweep_dir: Path, cell: dict) -> Path:
    """Where a planned cell's record lives: its folder in the sweep, or the folder of
    sweep.results_from that held its complete record when the sweep was planned."""
    return Path(cell["record_dir"]) if cell.get("record_dir") else sweep_dir / cell["subdir"]


def write_plan_file(plan: Plan) -> None:
    """Record every runnable cell of the sweep, so status can tell pending from unknown,
    and where each cell taken from sweep.results_from has its record. A plan.json that
    already says exactly this is left alone: a re-launch with nothing to run writes nothing
    (its sweep folder may be read-only, an archive)."""
    cells = []
    for c in plan.runnable:
        here = plan.sweep_dir / c.spec.subdir
        elsewhere = c.done_at is not None and c.done_at.resolve() != here.resolve()
        cells.append(
            {
                "name": c.spec.name,
                "cell_id": c.spec.cell_id,
                "subdir": c.spec.subdir,
                **({"record_dir": str(c.done_at.resolve())} if elsewhere else {}),
            }
        )
    content, path = {"sweep_id": plan.sweep_id, "cells": cells}, SweepPaths(plan.sweep_dir).plan
    try:
        if json.loads(path.read_text()) == content:
            return
    except (OSError, ValueError):
        pass
    atomic_write_json(path, content)
