"""Adds `launchers/` (and SWEEP_LAUNCHERS_DIR) to Hydra's search path, so that cluster
profiles in `launchers/hydra/launcher/*.yaml` are picked with `hydra/launcher=<name>`."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

LAUNCHERS_DIR = Path(__file__).resolve().parents[3] / "launchers"


class LaunchersSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        extra = os.environ.get("SWEEP_LAUNCHERS_DIR")
        if extra:
            search_path.append(provider="sweep-user-launchers", path=f"file://{Path(extra).resolve()}")
        search_path.append(provider="sweep-launchers", path=f"file://{LAUNCHERS_DIR}")
