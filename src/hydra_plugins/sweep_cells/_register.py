"""Register the sweepers with Hydra wherever sweep is installed; imported by `sweep.conf`.

The shipped config names the cell sweeper (`hydra/sweeper: cells`). Hydra 1.4 loads it from
the `hydra.plugins` entry points (pyproject.toml); Hydra 1.3 only scans the folders of the
`hydra_plugins` namespace, which an editable install (`pip install -e .`, with `sweep.conf`
mapped from conf/) does not list. Registering here, where Hydra first reads the config
package, finds the sweepers in every install; where Hydra found them already it changes
nothing. The leading `_` keeps Hydra's own scan from importing this module.
"""

from hydra.core.plugins import Plugins

from hydra_plugins.sweep_cells.cell_sweeper import CellSweeper
from hydra_plugins.sweep_cells.prepare_sweeper import PrepareSweeper

for sweeper in (CellSweeper, PrepareSweeper):
    Plugins.instance().register(sweeper)
