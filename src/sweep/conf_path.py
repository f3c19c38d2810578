"""Where the YAML configuration lives: the `sweep.conf` package, shipped inside `sweep`.

Hydra loads it as `pkg://sweep.conf`, as Hydra's own plugins ship theirs, so a wheel,
`pip install .` and `pip install -e .` all find it from any working directory. Users add
configs of their own with Hydra's `--config-dir` or `hydra.searchpath` (docs/sweeps.md).
"""

from pathlib import Path

CONF_PACKAGE = "sweep.conf"
"""The config package: for `hydra.main`, `initialize_config_module`, and `pkg://` entries."""

CONF_DIR = Path(__file__).resolve().parent / "conf"
"""The same folder on disk, for code that reads one shipped YAML file directly."""
