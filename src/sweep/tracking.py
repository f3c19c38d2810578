"""Weights & Biases for one cell: one run per cell, grouped by sweep, resumable on requeue.

`result.json` stays the source of truth; W&B is the dashboard. The run is written into
the cell's own folder. Online is attempted only when it can work (an API key and a
reachable server, checked in well under a second); otherwise the run is logged offline
and the cell says once why, and how to upload it later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf

from sweep.cellspec import CellSpec

log = logging.getLogger(__name__)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_said: set[str] = set()


class NullTracker:
    """`logger=none`: nothing leaves the machine."""

    def log_record(self, record: Mapping[str, Any], outcomes: Path | None) -> None:
        """Nothing to send."""


class WandbTracker:
    def __init__(self, run: Any, log_outcomes: bool) -> None:
        self.run, self.log_outcomes = run, log_outcomes

    def log_record(self, record: Mapping[str, Any], outcomes: Path | None) -> None:
        from sweep.aggregate import record_row

        self.run.summary.update(record_row(record))
        if self.log_outcomes and outcomes is not None and outcomes.exists():
            import pandas as pd
            import wandb

            self.run.log({"outcomes": wandb.Table(dataframe=pd.read_csv(outcomes))})


def run_id(sweep_id: str | None, cell_id: str) -> str:
    """Stable per (sweep, cell): a requeued cell resumes its run instead of adding one."""
    return hashlib.sha256(f"{sweep_id}/{cell_id}".encode()).hexdigest()[:20]


def say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)


def choose_mode(wandb_cfg: Mapping[str, Any]) -> tuple[str, str | None]:
    """(mode, why it fell back to offline or None). WANDB_MODE wins over the config."""
    mode = os.environ.get("WANDB_MODE") or str(wandb_cfg["mode"])
    if mode in ("offline", "disabled", "dryrun"):
        return ("offline" if mode == "dryrun" else mode), None
    if not _has_api_key():
        return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    url = urlparse(str(wandb_cfg["base_url"]))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=float(wandb_cfg["reachability_timeout_s"])).close()
    except OSError as error:
        return "offline", f"the W&B server {url.hostname}:{port} is unreachable ({error})"
    return "online", None


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # wandb raises its own errors when no key can be found
        return False


def scrubbed_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain dict, without Hydra's node and without any value
    that equals a secret from the environment."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    secrets = {os.environ[name] for name in SECRET_ENV if os.environ.get(name)}

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return "<redacted>" if isinstance(node, str) and node in secrets else node

    return scrub(plain)


@contextmanager
def tracker(cfg: Any, spec: CellSpec, sweep_id: str | None, cell_dir: Path) -> Iterator[NullTracker | WandbTracker]:
    if str(cfg.logger.name) == "none":
        yield NullTracker()
        return
    import wandb

    wandb_cfg = cfg.wandb
    mode, why = choose_mode(wandb_cfg)
    if why:
        say_once(f"W&B: logging offline because {why}. The runs are in each cell's wandb/ folder; upload them "
                 f"later with `wandb sync <cell folder>/wandb/offline-run-*` (or `wandb sync --sync-all` there).")
    side = Path(cfg.sweep.root).resolve() / ".wandb" if sweep_id else cell_dir / ".wandb-cache"
    os.environ.update({"WANDB_DIR": str(cell_dir), "WANDB_CACHE_DIR": str(side / "cache"),
                       "WANDB_DATA_DIR": str(side / "data")})
    run = wandb.init(
        project=str(wandb_cfg.project), entity=wandb_cfg.entity, group=sweep_id or "single-cells",
        job_type=spec.intervention, name=spec.name, id=run_id(sweep_id, spec.cell_id), resume="allow",
        tags=[spec.model, spec.intervention, spec.readout, f"L{spec.layer}", *wandb_cfg.tags],
        config=scrubbed_config(cfg), dir=str(cell_dir), mode=mode, reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=True, init_timeout=float(wandb_cfg.init_timeout_s),
                                x_disable_stats=True, disable_git=True, save_code=False))
    failed = True
    try:
        yield WandbTracker(run, bool(wandb_cfg.log_outcomes))
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)
