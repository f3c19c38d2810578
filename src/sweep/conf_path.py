"""Where the YAML configuration lives: the `sweep.conf` package, kept in `conf/` at the top
of the source tree and installed as `sweep.conf` (pyproject.toml's `package-dir`).

Hydra loads it as `pkg://sweep.conf`, as Hydra's own plugins ship theirs, so a wheel,
`pip install .` and `pip install -e .` all find it from any working directory. Users add
configs of their own with Hydra's `--config-dir` or `hydra.searchpath` (docs/sweeps.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sweep.errors import ConfigError

CONF_PACKAGE = "sweep.conf"
"""The config package: for `hydra.main`, `initialize_config_module`, and `pkg://` entries."""

CONF_DIR = Path(importlib.util.find_spec(CONF_PACKAGE).origin).resolve().parent
"""The same folder on disk, for code that reads one shipped YAML file directly."""

MAIN_PROVIDER = "main"
"""The provider name Hydra gives the primary config's entry of the search path."""


def check_not_shadowed(sources: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a user's config file that Hydra would silently ignore.

    `sources` is Hydra's search path as the job saw it (`hydra.runtime.config_sources`).
    Hydra takes a config from the first entry that has it, and the folders of `--config-dir`
    and `hydra.searchpath` come after the shipped configs: a user's `hydra/launcher/slurm.yaml`
    would lose to the shipped one, and the sweep would run with settings the user never
    chose. A copy identical to the shipped file changes nothing and is let through.
    """
    names = [source["provider"] for source in sources]
    if MAIN_PROVIDER not in names:
        return
    for source in sources[names.index(MAIN_PROVIDER) + 1 :]:
        root = Path(str(source["path"]))
        if source["schema"] != "file" or not root.is_dir():
            continue
        for path in sorted(root.rglob("*.yaml")):
            name = path.relative_to(root)
            shipped = CONF_DIR / name
            if shipped.is_file() and shipped.read_bytes() != path.read_bytes():
                group, mine = name.parent.as_posix(), f"my_{name.stem}"
                pick = f"--config-name {mine}" if group == "." else f"{group}={mine}"
                raise ConfigError(
                    f"{path} is hidden by the shipped {name.as_posix()} (folders from --config-dir and "
                    "hydra.searchpath come after the shipped configs, so Hydra would use the shipped one). "
                    f"Give yours a new name, e.g. {name.with_stem(mine).as_posix()}, and pick it with {pick}; "
                    f"to change a few of the shipped settings, start it with `defaults: [{name.stem}]` "
                    "(docs/sweeps.md, Your own configs)"
                )
