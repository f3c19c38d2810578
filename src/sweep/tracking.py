"""Weights & Biases for one cell: one run per cell, grouped by sweep, resumable on requeue.
(`wandb_run` holds the rules below for every run of a sweep; the sweep's summary run,
sweep.dashboard, starts through it too.)

`result.json` stays the source of truth; W&B is the dashboard, and the measurement never
depends on it. The run is written into the cell's own folder. Online is attempted only when
it can work (an API key and a reachable server, checked in well under a second); otherwise,
and whenever W&B fails later (init, log or finish: an error or a timeout), the cell's run
becomes an offline run (or, if even that fails, no run) and the cell says so once, with how
to upload it later. Every W&B call is bounded in time by wandb's own settings:
`init_timeout` (init), `finish_timeout` (finish and the exit-time teardown); logging only
queues data for wandb's service process and returns at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf

from sweep.cellspec import CellSpec
from sweep.errors import first_line
from sweep.record import AXES, record_row, versions
from sweep.redaction import redact, redact_tree
from sweep.rules import OneOf
from sweep.settings import WANDB_MODES, Wandb

log = logging.getLogger(__name__)
_said: set[str] = set()
# Why online failed earlier in this process: later cells (in-process launchers) go straight
# offline instead of each waiting out the same broken server.
_online_failed: str | None = None


class NullTracker:
    """`logger=none`: nothing leaves the machine."""

    def log_record(self, record: Mapping[str, Any], outcomes: Path | None) -> None:
        """Nothing to send."""


def check_mode(value: Any, key: str = "wandb.mode") -> str:
    """The W&B mode, or a ConfigError naming the setting: wandb itself would only fail at
    init, which by then is caught and turned into an offline run, hiding the typo. (The
    cell's spec checks both already; this guards direct callers.)"""
    if key == "WANDB_MODE" and value == "dryrun":  # wandb's old name for offline
        return "offline"
    return OneOf(*WANDB_MODES).check(key, value)


#: wandb's cache and staging folder, beside the runs it serves (never `.wandb`: see `wandb_run`)
WANDB_CACHE = ".wandb-cache"


def run_id(sweep_id: str | None, cell_id: str) -> str:
    """Stable per (sweep, cell): a requeued cell resumes its run instead of adding one."""
    return hashlib.sha256(f"{sweep_id}/{cell_id}".encode()).hexdigest()[:20]


def say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)


def choose_mode(settings: Wandb) -> tuple[str, str | None]:
    """(mode, why it fell back to offline or None). WANDB_MODE wins over the config."""
    mode = check_mode(settings.mode)  # a typo in the config fails even where WANDB_MODE is set
    if os.environ.get("WANDB_MODE"):
        mode = check_mode(os.environ["WANDB_MODE"], "WANDB_MODE")
    if mode != "online":
        return mode, None
    if _online_failed:
        return "offline", _online_failed
    if not _has_api_key():
        return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    url = urlparse(settings.base_url)
    if not url.hostname:
        return "offline", f"wandb.base_url={settings.base_url!r} is not a URL"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=settings.reachability_timeout_s).close()
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
    """The resolved config as a plain dict, without Hydra's node and with every secret
    (from the environment, or a token-like value) redacted."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    return redact_tree(plain)


@contextmanager
def _redacted_argv() -> Iterator[None]:
    """wandb copies `sys.argv` into the run's metadata (wandb-metadata.json, the .wandb
    log, the server) when the run starts; Hydra has parsed it already."""
    saved = sys.argv[:]
    sys.argv[:] = [redact(arg) for arg in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


def _remove_run_folders(wandb_dir: Path, rid: str) -> None:
    """Each attempt of a cell (a killed one, an online one that fell back) leaves its own
    `offline-run-<time>-<id>` / `run-<time>-<id>` folder, and `wandb sync --sync-all` would
    upload every partial one; the attempt that runs now replaces them."""
    for pattern in (f"offline-run-*-{rid}", f"run-*-{rid}"):
        for folder in wandb_dir.glob(pattern):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)


def _brief(error: BaseException) -> str:
    """One redacted line for a W&B error (their messages span lines and may quote input)."""
    return redact(first_line(f"{type(error).__name__}: {str(error).strip()}", 300))


def _teardown() -> None:
    """Stop wandb's service after a failed online init: it still holds the run id, so an
    offline init of the same id would fail with "run ID in use"."""
    import wandb

    try:
        wandb.teardown()
    except (Exception, SystemExit):  # teardown exits with the service's code when it failed
        pass


class WandbTracker:
    """A cell's W&B run that never fails the cell: the first W&B error or timeout makes the
    run offline (its data stays in the cell's wandb/ folder, for `wandb sync`) and is said
    once; after that the run is left alone."""

    def __init__(self, name: str, run_dir: Path, log_outcomes: bool) -> None:
        self.name, self.run_dir, self.log_outcomes = name, run_dir, log_outcomes
        self.run: Any = None
        self.online = False  # the run started online
        self.broken = False

    def start(self, mode: str, init: dict[str, Any]) -> None:
        """Init in `mode`; if online fails, fall back to offline; if that fails, no run."""
        global _online_failed
        _remove_run_folders(self.run_dir / "wandb", init["id"])
        try:
            self.run = self._init(mode, init)
            self.online = mode == "online"
            return
        except Exception as error:
            why = f"wandb.init failed ({_brief(error)})"
        if mode == "online":
            _online_failed = f"W&B failed earlier in this process ({why})"
            _teardown()
            _remove_run_folders(self.run_dir / "wandb", init["id"])
            try:
                self.run = self._init("offline", init)
            except Exception as error:
                why += f", and offline too ({_brief(error)})"
            else:
                self._say_offline(why)
                return
        log.warning("W&B: %s has no W&B run because %s; its record is written as usual.", self.name, why)

    @staticmethod
    def _init(mode: str, init: dict[str, Any]) -> Any:
        import wandb

        with _redacted_argv():  # Settings inside the guard too: it validates base_url
            return wandb.init(mode=mode, **{**init, "settings": wandb.Settings(**init["settings"])})

    def _say_offline(self, why: str) -> None:
        folder = self.run.settings.sync_dir
        log.warning(
            "W&B: %s's run is offline because %s. It is in %s; upload it later with `wandb sync %s`.",
            self.name,
            why,
            folder,
            folder,
        )

    def _failed(self, what: str, error: BaseException) -> None:
        """The first failure of a started run: said once. An online run's failure (a rate
        limit or a hang mid-run) also sends the process's later runs straight offline, so
        that each cell of a unit does not wait out the same server again."""
        global _online_failed
        if not self.broken:
            self.broken = True
            why = f"{what} failed ({_brief(error)})"
            if self.online:
                _online_failed = f"W&B failed earlier in this process ({why})"
            self._say_offline(why)

    def guarded(self, what: str, action: Callable[[Any], None]) -> None:
        """`action(run)`, unless the run is gone or broken; its first error makes the run
        offline with one message (`what` failed), and later actions are skipped."""
        if self.run is None or self.broken:
            return
        try:
            action(self.run)
        except Exception as error:
            self._failed(what, error)

    def log_record(self, record: Mapping[str, Any], outcomes: Path | None) -> None:
        def send(run: Any) -> None:
            run.summary.update(record_row(record))
            if self.log_outcomes and outcomes is not None and outcomes.exists():
                import pandas as pd
                import wandb

                run.log({"outcomes": wandb.Table(dataframe=pd.read_csv(outcomes))})

        self.guarded("logging to W&B", send)

    def finish(self, exit_code: int) -> None:
        """Bounded by `finish_timeout`; a timeout (finish_timeout_raises) or an error leaves
        the unsent data on disk for `wandb sync`."""
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as error:
            self._failed("finishing the W&B run (uploading its data)", error)
            _teardown()


def cell_keys(spec: CellSpec) -> dict[str, Any]:
    """The fields users group and filter cell runs by, as top-level config keys with the
    cell's own values, as its record has them (`layer` the resolved hidden-state index,
    `seed` null for an intervention that draws no random numbers). The resolved config, whose
    `model`, `intervention` and `readout` are groups, sits beside them under `config`."""
    return {axis: getattr(spec, axis) for axis in AXES}


@contextmanager
def tracker(cfg: Any, spec: CellSpec, sweep_id: str | None, cell_dir: Path) -> Iterator[NullTracker | WandbTracker]:
    """The cell's tracker, as its settings (`spec.settings.tracking`) say; `cfg`, the cell's
    resolved config, is only shown (redacted) in the run's config. Raises only ConfigError
    (a bad `wandb.mode`), before any work; W&B's own failures never leave it."""
    tracking = spec.settings.tracking
    if tracking.wandb is None:  # logger=none
        yield NullTracker()
        return
    # wandb's cache and staging: shared by a sweep's cells, in the sweep's own folder (a cell's
    # folder is <sweep folder>/<model>/<cell>, sweep.layout), wherever hydra.sweep.dir puts it
    # (not `.wandb`, where wandb would put the sweep's summary run, whose run folder is the sweep's)
    side = cell_dir.resolve().parent.parent / WANDB_CACHE if sweep_id else cell_dir / WANDB_CACHE
    settings = tracking.wandb
    init = dict(
        group=sweep_id or "single-cells",
        job_type=spec.intervention,
        name=spec.name,
        id=run_id(sweep_id, spec.cell_id),
        tags=[spec.model, spec.intervention, spec.readout, f"L{spec.layer}", *settings.tags],
        config={
            **cell_keys(spec),
            "identity": redact_tree(spec.science),
            "config": scrubbed_config(cfg),
            "versions": versions(),
        },
    )
    offline_hint = (
        "The runs are in each cell's wandb/ folder; upload them later with `wandb sync <cell "
        "folder>/wandb/offline-run-*` (or `wandb sync --sync-all` there)."
    )
    with wandb_run(
        settings, init, run_dir=cell_dir, side_dir=side, offline_hint=offline_hint, log_outcomes=settings.log_outcomes
    ) as track:
        yield track


@contextmanager
def wandb_run(
    settings: Wandb,
    init: dict[str, Any],
    *,
    run_dir: Path,
    side_dir: Path,
    offline_hint: str,
    log_outcomes: bool = False,
) -> Iterator[WandbTracker]:
    """One W&B run in `run_dir` (wandb's cache and staging in `side_dir`) under the rules
    every run of the sweep follows: the mode from `choose_mode` (said once with
    `offline_hint` when it falls back), a stable id resumed on re-run with the earlier
    attempts' folders removed, every call bounded in time, and no W&B failure leaving
    here. `init`: group, job_type, name, id, tags and config of the run. `side_dir` must
    not be `run_dir/.wandb`: wandb writes its runs there instead of `run_dir/wandb/` when
    that folder exists and `wandb/` does not."""
    mode, why = choose_mode(settings)
    if why:
        say_once(f"W&B: logging offline because {why}. {offline_hint}")
    os.environ.update(
        {
            "WANDB_DIR": str(run_dir),
            "WANDB_CACHE_DIR": str(side_dir / "cache"),
            "WANDB_DATA_DIR": str(side_dir / "data"),
        }
    )
    # wandb-core's own error reports go to base_url too; against a server that hangs they
    # hold the cell's exit ~10 s, and compute nodes have nowhere to send them anyway.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    init = dict(
        project=settings.project,
        entity=settings.entity,
        resume="allow",
        **init,
        dir=str(run_dir),
        reinit="finish_previous",
        settings=dict(
            console="off",
            silent=True,
            base_url=settings.base_url,
            init_timeout=settings.init_timeout_s,
            finish_timeout=settings.finish_timeout_s,
            finish_timeout_raises=True,
            x_disable_stats=True,
            disable_git=True,
            save_code=False,
            # wandb's requirements.txt re-reads every installed package's metadata
            # (~70 ms a run, most of a cell's bookkeeping); the config's `versions`
            # carries what the record pins instead
            x_save_requirements=False,
        ),
    )
    track = WandbTracker(init["name"], run_dir, log_outcomes)
    track.start(mode, init)
    failed = True
    try:
        yield track
        failed = False
    finally:
        track.finish(exit_code=1 if failed else 0)
