"""Work units: which cells run together, in one Hydra job (one SLURM array task).

A cell is the unit of identity and of records; a unit is the unit of execution. Cells
that agree on everything but what they measure (layer, intervention, readout, seed) share
a model, its artifacts and every validation batch's unmodified forward, so one job runs
them all (sweep.engine). The sweeper writes each unit's cells to `units/<id>/unit.json` in
the sweep folder and launches one job per unit; that job's config is its first cell's,
and every other cell's config is that one with the cell's own measured nodes laid over it.

Torch-free: the planner groups thousands of cells in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.cellspec import CellSpec
from sweep.errors import ConfigError
from sweep.files import atomic_write_json
from sweep.interventions import CLS, NONE
from sweep.layout import SweepPaths
from sweep.redaction import redact
from sweep.settings import UnitSize

#: the config nodes in which cells of one unit may differ: what a cell measures
MEASURED = ("layer", "seed", "intervention", "readout")
PREPARE = "prepare"  # a unit without cells that fills the artifact cache for split models


def unit_key(config: Mapping[str, Any]) -> str:
    """Cells with equal keys can share a job: the same model, data, probe, compute, cache,
    logger and sweep settings; only the MEASURED nodes differ."""
    shared = {k: v for k, v in config.items() if k not in MEASURED}
    text = json.dumps(shared, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def branch_key(spec: CellSpec) -> tuple[int, str, int | None]:
    """Cells with equal branches read the same intervened output: one suffix, every readout."""
    return spec.layer, json.dumps(spec.science["intervention"], sort_keys=True, default=str), spec.seed


def donor_key(spec: CellSpec) -> str:
    """Cells with equal keys have equal donors: the same intervention settings but for which
    token moves and what is scored besides (probe_after), and the same seed."""
    values = {k: v for k, v in spec.science["intervention"].items() if k not in ("token", "probe_after")}
    return json.dumps([values, spec.seed], sort_keys=True, default=str)


def reads_donor_states(spec: CellSpec) -> bool:
    """Whether the cell's branch moves a token other than the CLS from its donors: their
    hidden state at L is then recomputed batch by batch (only the CLS is cached)."""
    return spec.intervention != NONE and spec.token not in (None, CLS)


def cost_per_image(specs: Iterable[CellSpec]) -> int:
    """Block applications per validation image the engine spends on these cells: the
    unmodified prefix up to the deepest layer a branch starts from (below N, or at N for a
    branch that reads donor states), then N - L per distinct branch, plus, per distinct set
    of donors that branches read states from, the donors' prefix to the deepest such branch
    (an intervention on the CLS at L = N runs no block; the unmodified pass over train + val
    for the cached features comes on top, once per model and data)."""
    branches = {branch_key(s): s for s in specs if s.intervention != NONE}
    starts = [s.layer for s in branches.values() if s.layer < s.n_layers or reads_donor_states(s)]
    donor_prefixes: dict[str, int] = {}  # one prefix per donor set, to the deepest layer read from it
    for spec in branches.values():
        if reads_donor_states(spec):
            donor_prefixes[donor_key(spec)] = max(spec.layer, donor_prefixes.get(donor_key(spec), 0))
    return max(starts, default=0) + sum(s.n_layers - s.layer for s in branches.values()) + sum(donor_prefixes.values())


@dataclass(frozen=True)
class Unit:
    """Cells of one job. `cells` are the planner's PlannedCell objects (overrides, spec, config)."""

    cells: tuple[Any, ...]
    prepare: bool = False

    @property
    def unit_id(self) -> str:
        ids = sorted(c.spec.cell_id for c in self.cells)
        kind = PREPARE if self.prepare else "cells"
        return f"{kind}-" + hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]

    @property
    def model(self) -> str:
        return self.cells[0].spec.model

    @property
    def cost(self) -> int:
        return 0 if self.prepare else cost_per_image(c.spec for c in self.cells)

    @property
    def size(self) -> int:
        return 0 if self.prepare else len(self.cells)

    def overrides(self, sweep_id: str) -> list[str]:
        """The job's command line: its first cell's (model, data, compute ...), the sweep and the unit."""
        return [*self.cells[0].overrides, f"sweep.id={sweep_id}", f"sweep.unit.id={self.unit_id}"]

    def describe(self) -> str:
        if self.prepare:
            return f"{self.unit_id}: prepare {self.model}'s artifacts (features, heads, probes) for its other units"
        return (
            f"{self.unit_id}: {self.model}, {len(self.cells)} cells, "
            f"{self.cost} block applications per validation image"
        )


def make_units(cells: Sequence[Any], size: UnitSize) -> list[Unit]:
    """Group planned cells by `unit_key`, then cut each group into units of at most
    `size.max_cells` cells and `size.max_cost` block applications per image, keeping the
    cells of one branch together where the limits allow (they share a suffix)."""
    groups: dict[str, list[Any]] = {}
    for cell in cells:
        groups.setdefault(unit_key(cell.config), []).append(cell)
    units: list[Unit] = []
    for group in groups.values():
        group.sort(key=lambda c: (branch_key(c.spec), c.spec.readout))
        chunk: list[Any] = []
        for cell in group:
            if chunk and not _fits([*chunk, cell], size):
                units.append(Unit(tuple(chunk)))
                chunk = []
            chunk.append(cell)
        units.append(Unit(tuple(chunk)))
    return units


def _fits(cells: list[Any], size: UnitSize) -> bool:
    if size.max_cells is not None and len(cells) > size.max_cells:
        return False
    return size.max_cost is None or cost_per_image(c.spec for c in cells) <= size.max_cost


def preparation_units(units: Sequence[Unit]) -> list[Unit]:
    """One preparing unit for each group split across units: its artifacts are computed
    once, before the group's units start, so that none of them holds a GPU waiting on
    another's lock."""
    by_group: dict[str, list[Unit]] = {}
    for unit in units:
        by_group.setdefault(unit_key(unit.cells[0].config), []).append(unit)
    return [
        Unit(tuple(c for u in group for c in u.cells), prepare=True) for group in by_group.values() if len(group) > 1
    ]


# -- the unit file -------------------------------------------------------------------


def write_unit(sweep_dir: Path, unit: Unit) -> Path:
    """units/<id>/unit.json: every cell's name, id, folder, overrides and measured nodes."""
    cells = (
        []
        if unit.prepare
        else [
            {
                "name": c.spec.name,
                "cell_id": c.spec.cell_id,
                "subdir": c.spec.subdir,
                "overrides": [redact(o) for o in c.overrides],  # for people reading it: the job has its own
                "measured": {k: c.config[k] for k in MEASURED},
            }
            for c in unit.cells
        ]
    )
    path = SweepPaths(sweep_dir).unit_file(unit.unit_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path,
        {
            "unit_id": unit.unit_id,
            "model": unit.model,
            "prepare": unit.prepare,
            "cost_per_image": unit.cost,
            "cells": cells,
        },
    )
    return path


def read_unit(sweep_dir: Path, unit_id: str) -> dict[str, Any]:
    path = SweepPaths(sweep_dir).unit_file(unit_id)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"sweep.unit.id={unit_id} names no readable unit file ({path}: {error}); units are "
            "written by the cell sweeper, so launch the sweep with -m instead"
        ) from None


def read_units(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every unit file of a sweep (for sweep-status), oldest first."""
    found = []
    for path in sorted(SweepPaths(sweep_dir).unit_files(), key=lambda p: p.stat().st_mtime):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def cell_config(job_cfg: DictConfig, entry: Mapping[str, Any]) -> DictConfig:
    """The config of one cell of the unit: the job's, with the cell's measured nodes."""
    cfg = job_cfg.copy()
    with open_dict(cfg):
        for key, value in entry["measured"].items():
            cfg[key] = OmegaConf.create(value) if isinstance(value, Mapping) else value
    return cfg
