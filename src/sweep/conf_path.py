"""Where the YAML configuration lives: `conf/` at the repository root, or SWEEP_CONF_DIR."""

import os
from pathlib import Path

CONF_DIR = Path(os.environ.get("SWEEP_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
