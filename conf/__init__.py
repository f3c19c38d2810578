"""The shipped YAML configuration (Hydra's primary config, `pkg://sweep.conf`).

A package, not just a folder, so that Hydra's package config source finds it wherever
sweep is installed: Hydra recognises a `pkg://` search-path entry by this `__init__.py`.
"""

# The config names the cell sweeper (`hydra/sweeper: cells`). Hydra 1.4 loads it from the
# `hydra.plugins` entry points (pyproject.toml); Hydra 1.3 only scans the folders of the
# `hydra_plugins` namespace, which an editable install (`pip install -e .`, with this folder
# mapped from conf/) does not list. Registering here, where Hydra first reads this package,
# finds the sweepers in every install; in one where Hydra found them already it changes nothing.
from hydra.core.plugins import Plugins as _Plugins

from hydra_plugins.sweep_cells.cell_sweeper import CellSweeper as _CellSweeper
from hydra_plugins.sweep_cells.prepare_sweeper import PrepareSweeper as _PrepareSweeper

for _sweeper in (_CellSweeper, _PrepareSweeper):
    _Plugins.instance().register(_sweeper)
