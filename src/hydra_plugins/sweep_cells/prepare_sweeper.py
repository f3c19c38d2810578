"""`hydra/sweeper=prepare`: the cell sweeper's plan, prepared instead of launched (`sweep-prepare`).

It plans exactly what `hydra/sweeper=cells` would (the same grid, experiments' `params`
and `grids`, the same skipped points), then hands every runnable cell to
`sweep.prepare.prepare_grid`, which fetches their models and builds their images. Nothing
is launched and no sweep folder is written.
"""

# No `from __future__ import annotations`: see cell_sweeper.py (Hydra and dataclasses).
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from hydra_plugins.sweep_cells.cell_sweeper import CellSweeper, CellSweeperConf
from sweep.settings import parse_sweep


@dataclass
class PrepareSweeperConf(CellSweeperConf):
    _target_: str = "hydra_plugins.sweep_cells.prepare_sweeper.PrepareSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="prepare", node=PrepareSweeperConf, provider="sweep")


class PrepareSweeper(CellSweeper):
    def _sweep(self, arguments: list[str]) -> Any:
        from sweep.prepare import prepare_grid

        run = parse_sweep(self.config.sweep)
        plan = self._plan(arguments, force=run.force)
        prepare_grid(plan.sweep_id, plan.runnable, dry_run=run.dry_run)
        return []
