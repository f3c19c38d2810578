"""The shipped YAML configuration (Hydra's primary config, `pkg://sweep.conf`).

A package, not just a folder, so that Hydra's package config source finds it wherever
sweep is installed: Hydra recognises a `pkg://` search-path entry by this `__init__.py`.
"""

import hydra_plugins.sweep_cells._register  # noqa: F401  (the sweepers this config names, in every install)
