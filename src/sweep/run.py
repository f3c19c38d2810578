"""`sweep-run`: the Hydra app that runs one cell, or one work unit of a sweep, and writes
each cell's record.

With `-m`, Hydra's multirun hands the grid to the cell sweeper (hydra_plugins/), which
skips finished cells, packs the rest into work units (sweep.units) and fans the units out
through the configured launcher; each unit is one Hydra job.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import omegaconf
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from sweep import record as rec
from sweep.cell_state import stale_progress
from sweep.cellspec import CellSpec, cell_spec
from sweep.conf_path import CONF_PACKAGE, check_not_shadowed
from sweep.errors import ConfigError, SweepError, entered, mark_entered
from sweep.files import WriteFailed, atomic_write_json
from sweep.layout import OUTCOMES_FILE, PROGRESS_FILE, RESULT_FILE, UNIT_SUMMARY, UNITS_DIR
from sweep.lease import LOCK_FILE as LEASE_LOCK_FILE
from sweep.lease import Lease, LeaseHeld
from sweep.redaction import redact_files, redact_logs
from sweep.settings import SweepRun, check_cache_dir, check_device, parse_sweep
from sweep.units import cell_config, read_unit

log = logging.getLogger("sweep.run")


def _cell_resolver(what: str, *, _root_: DictConfig) -> str:
    """`${cell:subdir}` / `${cell:id}` — folders keyed by cell so a re-run lands in place; a
    work unit's job (sweep.unit.id, set by the cell sweeper) has its folder in units/. A
    config that is no valid cell has no folder: its ConfigError is raised here (`CheckCell`
    reports it on the command line before Hydra gets here)."""
    unit = _root_.sweep.unit.id
    if unit is not None:
        return {"subdir": f"{UNITS_DIR}/{unit}", "id": str(unit), "name": str(unit)}[what]
    spec = cell_spec(_root_)
    return {"subdir": spec.subdir, "id": spec.cell_id, "name": spec.name}[what]


# OmegaConf 2.4 deprecates register_new_resolver for register_resolver, 2.3's name for its legacy API
_register_resolver = (
    OmegaConf.register_new_resolver
    if omegaconf.__version__.startswith(("2.2.", "2.3."))
    else OmegaConf.register_resolver
)
_register_resolver("cell", _cell_resolver, replace=True)


class CheckCell(Callback):
    """`hydra.callbacks.check_cell` (conf/config.yaml): `sweep-run` refuses a bad cell before
    Hydra makes the run's folder, whose name (`${cell:subdir}`) needs a valid cell. Hydra
    would report the resolver's error with a traceback of its own and OmegaConf's frames;
    this is the one line every other bad input gets, and exit 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.sweep.unit.id is not None:  # a unit's job: its cells are checked as it reads them
            return
        try:
            cell_spec(config)
            parse_sweep(config.sweep)
        except SweepError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)


def _pause_for_crash_tests(name: str) -> None:
    """SWEEP_TEST_PAUSE="<part of a cell name>=<seconds>" holds matching cells just before
    their record is written, so tests can kill or preempt a cell mid-run deterministically."""
    pattern, _, seconds = os.environ.get("SWEEP_TEST_PAUSE", "").partition("=")
    if pattern and pattern in name:
        log.info("SWEEP_TEST_PAUSE: holding %s for %s s", name, seconds)
        time.sleep(float(seconds))


@dataclass
class JobCell:
    """One cell of this job: its spec, its own config, and its folder in the sweep."""

    spec: CellSpec
    cfg: DictConfig
    folder: Path
    lease: Lease | None = None


def job_cells(cfg: DictConfig) -> tuple[list[JobCell], str | None, bool]:
    """The cells this job runs, its unit id, and whether it only prepares artifacts. A plain
    `sweep-run` is a unit of one, in Hydra's output folder; a sweep's job reads its unit file."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    unit_id = cfg.sweep.unit.id
    if unit_id is None:
        return [JobCell(cell_spec(cfg), cfg, output_dir)], None, False
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    unit = read_unit(sweep_dir, str(unit_id))
    cells = []
    for entry in unit["cells"]:
        cell_cfg = cell_config(cfg, entry)
        spec = cell_spec(cell_cfg)
        if spec.cell_id != entry["cell_id"]:
            raise ConfigError(
                f"unit {unit_id}: cell {entry['name']} has id {spec.cell_id} in this job's config, "
                f"{entry['cell_id']} in its unit file; re-launch the sweep to plan it again"
            )
        cells.append(JobCell(spec, cell_cfg, sweep_dir / entry["subdir"]))
    return cells, str(unit_id), bool(unit["prepare"])


def run_cell(cfg: DictConfig) -> dict[str, Any]:
    """Run this job's cells — one for `sweep-run`, a work unit's in a sweep — skipping those
    whose record is complete or whose lease another live owner holds (see sweep.lease).
    Returns the one cell's record, or for a unit each cell's status."""
    started = time.perf_counter()
    redact_files(Path(HydraConfig.get().runtime.output_dir) / ".hydra")  # Hydra keeps the command line verbatim
    check_not_shadowed(list(HydraConfig.get().runtime.config_sources))
    cells, unit_id, prepare_only = job_cells(cfg)
    run = parse_sweep(cfg.sweep)
    statuses: dict[str, Any] = {}
    todo = []
    for cell in cells:
        if rec.is_complete(cell.folder, cell.spec.cell_id) and not run.force:
            log.info("%s is already done (%s); skipping — sweep.force=true recomputes it", cell.spec.name, cell.folder)
            statuses[cell.spec.name] = rec.read_record(cell.folder)
            stale = stale_progress(cell.folder, cell.spec.cell_id)  # a kill after its record, before its cleanup
            if stale is not None:
                stale.unlink(missing_ok=True)
        else:
            todo.append(cell)
    if not todo and not prepare_only:
        return _job_return(cells, statuses, unit_id)

    import torch  # heavy imports only once there is work to do

    from sweep.cache import ArtifactCache

    for cell in todo:
        check_device(cell.spec.settings.compute, cuda_devices=torch.cuda.device_count())
    unit = cells[0].spec if cells else cell_spec(cfg)  # any cell of the unit: they share what is read below
    settings = unit.settings.cache
    check_cache_dir(settings.dir, Path(to_absolute_path(settings.dir)))
    cache = ArtifactCache(to_absolute_path(settings.dir), enabled=settings.enabled, verify=settings.verify)
    if prepare_only:
        from sweep.artifacts import ComputeLedger
        from sweep.engine import prepare

        ledger = ComputeLedger()
        prepared = prepare(unit, [], cache, ledger)
        _write_unit_summary(
            {
                "block_calls": ledger.total,
                "block_calls_by_purpose": dict(ledger.block_calls),
                "prepare_s": prepared.seconds,
            },
            0,
            started,
            cache,
        )
        log.info("unit %s: %s's artifacts are ready (%.1f s)", unit_id, unit.model, prepared.seconds)
        return {"unit": unit_id, "prepared": True}
    leased = _take_leases(todo, run, statuses)
    if leased:
        _measure(leased, cache, run, unit_id, started, statuses)
    return _job_return(cells, statuses, unit_id)


def _job_return(cells: list[JobCell], statuses: dict[str, Any], unit_id: str | None) -> dict[str, Any]:
    if unit_id is None:
        return statuses[cells[0].spec.name]
    return {"unit": unit_id, "cells": {name: (s or {}).get("status") for name, s in statuses.items()}}


def _take_leases(cells: list[JobCell], run: SweepRun, statuses: dict[str, Any]) -> list[JobCell]:
    """The cells this job owns now; a cell another launch runs is left to it (measuring it
    here too would count it twice)."""
    leased = []
    for cell in cells:
        base = rec.cell_fields(cell.spec, cell.cfg, cell.cfg.sweep.id)
        try:
            cell.lease = Lease.acquire(cell.folder, stale_after_s=run.stale_after_s, heartbeat_s=run.heartbeat_s)
        except LeaseHeld as held:
            log.info("%s is running elsewhere (%s); skipping it here", cell.spec.name, held)
            statuses[cell.spec.name] = {**base, "status": "running elsewhere", "owner": held.holder}
            continue
        except WriteFailed:  # a full disk, a read-only folder: nothing runs, what was taken is let go
            _let_go(leased)
            raise
        if run.force:  # recompute: a checkpoint left by a kill after an earlier record must not be resumed
            (cell.folder / PROGRESS_FILE).unlink(missing_ok=True)
        if rec.is_complete(cell.folder, cell.spec.cell_id) and not run.force:
            log.info("%s was finished elsewhere while this launch waited; skipping", cell.spec.name)
            cell.lease.release()
            statuses[cell.spec.name] = rec.read_record(cell.folder)
            continue
        leased.append(cell)
    return leased


def _measure(
    cells: list[JobCell], cache: Any, run: SweepRun, unit_id: str | None, started: float, statuses: dict[str, Any]
) -> None:
    """Measure the leased cells as one unit; write each cell's record (and W&B run) the
    moment it is measured. A failure of the unit as a whole fails every cell not yet written.
    A record that cannot be written (a full disk) is no failed measurement: its cell's lease
    is let go, leaving it pending, the other cells still get their try, and the unit then
    ends with WriteFailed naming the first such file."""
    from sweep.engine import Checkpoints, measure_unit

    by_id = {cell.spec.cell_id: cell for cell in cells}
    written: set[str] = set()
    unwritten: list[WriteFailed] = []  # records that could not be written (a full disk): their cells stay pending

    def write(cell: JobCell, result: Any, error: BaseException | None, trace: str | None = None) -> None:
        try:
            statuses[cell.spec.name] = _write_cell(cell, result, error, unit_id, started, trace=trace)
        except WriteFailed as failed:  # the other cells may still fit: each gets its try
            log.error("%s: %s", cell.spec.name, failed)
            unwritten.append(failed)
            _let_go([cell])
        written.add(cell.spec.cell_id)

    def emit(spec: CellSpec, result: Any, error: BaseException | None) -> None:
        write(by_id[spec.cell_id], result, error)

    checkpoints = Checkpoints(lambda spec: by_id[spec.cell_id].folder / PROGRESS_FILE, run.unit.checkpoint_s)
    try:
        summary = measure_unit([cell.spec for cell in cells], cache, emit, checkpoints=checkpoints)
    except SweepError:  # bad input, not a failed measurement: leave the cells pending
        for cell in cells:
            if cell.spec.cell_id not in written:
                cell.lease.release(forget=True)
        raise
    except WriteFailed as error:  # another file of the unit: no measurement failed, the cells stay pending
        _let_go([cell for cell in cells if cell.spec.cell_id not in written])
        unwritten.append(error)
        raise _first(unwritten) from error
    except Exception as error:
        trace = traceback.format_exc()
        for cell in cells:
            if cell.spec.cell_id not in written:
                write(cell, None, error, trace)
        raise
    # not on SystemExit (preemption, kill): the leases then die with their process or job
    if unwritten:
        raise _first(unwritten)
    if unit_id is not None:
        _write_unit_summary(summary, len(cells), started, cache)
    log.info(
        "unit %s: %d cells in %.1f s, %s block applications",
        unit_id or "of one",
        len(cells),
        time.perf_counter() - started,
        f"{summary['block_calls']:,}",
    )


def _first(unwritten: list[WriteFailed]) -> WriteFailed:
    """The unit's error: its first file that could not be written, and how many more."""
    first, more = unwritten[0], len(unwritten) - 1
    return WriteFailed(
        first.path, first.errno, first.reason + (f" (and {more} more of this unit's files)" if more else "")
    )


def _let_go(cells: list[JobCell]) -> None:
    """Release these cells' leases after a write failed, so that they show as pending and a
    re-launch runs them; a lease that cannot be let go either dies with this process."""
    for cell in cells:
        try:
            cell.lease.release()
        except WriteFailed as error:
            log.error("%s: %s", cell.spec.name, error)


def _write_unit_summary(summary: dict[str, Any], n_cells: int, started: float, cache: Any) -> None:
    """units/<id>/summary.json, for sweep-status and the benchmarks: what the unit ran, how
    long it took, and how long it waited on another process's cache lock."""
    atomic_write_json(
        Path(HydraConfig.get().runtime.output_dir) / UNIT_SUMMARY,
        {**summary, "cells": n_cells, "wall_s": time.perf_counter() - started, "lock_wait_s": cache.stats.lock_wait_s},
    )


def _write_cell(
    cell: JobCell,
    result: Any,
    error: BaseException | None,
    unit_id: str | None,
    started: float,
    trace: str | None = None,
) -> dict[str, Any]:
    """The cell's record, outcomes and W&B run, written once by the lease's owner; returns the record."""
    from sweep.tracking import tracker

    spec, cfg, lease = cell.spec, cell.cfg, cell.lease
    base = {**rec.cell_fields(spec, cfg, cfg.sweep.id), "unit": unit_id}
    if result is not None:
        if cfg.outcomes.save:
            rec.write_outcomes(cell.folder, result.outcomes)
        record = {
            **base,
            "status": "complete",
            "metrics": result.metrics,
            "counts": result.counts,
            "compute": result.compute,
            "timings": {**result.timings, "total_s": time.perf_counter() - started},
            "artifacts": result.artifacts,
            "versions": {**rec.versions(), "model_revision": result.model_revision},
            "outcomes_file": OUTCOMES_FILE if cfg.outcomes.save else None,
        }
    else:
        if rec.is_complete(cell.folder, spec.cell_id):  # never overwrite a finished measurement
            lease.release()
            return rec.read_record(cell.folder)
        record = {
            **base,
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": trace or "".join(traceback.format_exception(error)),
            "versions": rec.versions(),
        }
    with tracker(cfg, spec, cfg.sweep.id, cell.folder) as track:
        _pause_for_crash_tests(spec.name)
        if not lease.is_mine():  # taken over after missed heartbeats: the new owner writes it
            log.warning(
                "%s: another owner took this cell's lease over while it was measured here; "
                "this measurement is dropped so that the cell has one writer",
                spec.name,
            )
            lease.release()  # stops the heartbeat; the lease itself is the new owner's
            return {**base, "status": "taken over"}
        track.log_record(record, cell.folder / OUTCOMES_FILE if result is not None and cfg.outcomes.save else None)
        rec.write_record(cell.folder, record)
    (cell.folder / PROGRESS_FILE).unlink(missing_ok=True)
    lease.release()
    if result is not None:
        log.info(
            "%s: %s", spec.name, ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
        )
    else:
        log.error("%s failed: %s", spec.name, record["error"])
    return record


# Hydra 1.3 asks for version_base; 1.4 deprecates it (it behaves as 1.3 did without it) and
# asks instead which config `_target_`s it may instantiate: the callback `check_cell`
_HYDRA_MAIN = (
    {"version_base": "1.3"}
    if hydra.__version__.startswith("1.3.")
    else {"execution_whitelist": ["sweep.run.CheckCell"]}
)


@hydra.main(config_path=f"pkg://{CONF_PACKAGE}", config_name="config", **_HYDRA_MAIN)
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    mark_entered()
    redact_logs()
    try:
        record = run_cell(cfg)
    except SweepError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the cell sweeper collects and reports failures
        print(f"error: {error}", file=sys.stderr)
        _remove_if_only_hydra_files(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    except WriteFailed as error:  # a full disk, a read-only folder: what this job held is released
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if HydraConfig.get().mode != RunMode.MULTIRUN and record.get("status") == "failed":
        folder = Path(HydraConfig.get().runtime.output_dir)
        print(
            f"error: {record['name']} failed: {record['error']} (its record: {folder / RESULT_FILE})", file=sys.stderr
        )
        sys.exit(1)  # a sweep reads its cells' states from their records instead
    return record


def _remove_if_only_hydra_files(folder: Path) -> None:
    """Bad input leaves nothing behind: Hydra made the job's folder (its .hydra/ and log)
    before the settings could be checked, and a refusal as the unit starts comes after the
    cell's lease was taken (its lock file stays when the lease is released); a folder
    holding anything else is kept."""
    ours = {".hydra", f"{HydraConfig.get().job.name}.log", LEASE_LOCK_FILE}
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= ours:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.parents:
            if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def main() -> None:
    """Exit 2 for every kind of bad input: Hydra reports an unknown config group, option or
    an unparsable override itself (exit 1) before any code of ours runs. Ctrl-C (while Hydra
    composes, the sweep plans, torch loads, or later) is one line and exit 130, the shell's
    code for SIGINT, not a traceback through Hydra's frames."""
    try:
        _hydra_main()
    except KeyboardInterrupt:
        print(
            "sweep-run: interrupted (Ctrl-C); re-launching the same command resumes where it stopped", file=sys.stderr
        )
        _exit_interrupted()
    except SystemExit as exit:
        if exit.code == 1 and not entered():
            sys.exit(2)
        raise


def _exit_interrupted() -> None:
    """Exit 130 now. Not `sys.exit`: a Ctrl-C that lands inside code run by `exec` (every
    dataclass and named tuple an import defines) marks the interpreter, which then ends
    itself by SIGINT whatever status it was asked for. The `finally` blocks between the
    signal and here have run (a cell's W&B run finished, its lease left to die with it)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    main()
