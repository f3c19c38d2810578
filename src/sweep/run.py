"""`sweep-run`: the Hydra app that runs exactly one cell and writes its record.

With `-m`, Hydra's multirun hands the grid to the cell sweeper (hydra_plugins/), which
skips finished cells and fans the rest out through the configured launcher.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from sweep import record as rec
from sweep.cellspec import cell_spec
from sweep.conf_path import CONF_DIR
from sweep.errors import SweepError, entered, mark_entered
from sweep.lease import Lease, LeaseHeld
from sweep.settings import check_device, parse_sweep
from sweep.redaction import redact_files, redact_logs

log = logging.getLogger("sweep.run")


def _cell_resolver(what: str, *, _root_: DictConfig) -> str:
    """`${cell:subdir}` / `${cell:id}` — folders keyed by cell so a re-run lands in place."""
    try:
        spec = cell_spec(_root_)
    except (SweepError, KeyError, TypeError, ValueError):
        return f"invalid/{_root_.model.name}-L{_root_.layer}"
    return {"subdir": spec.subdir, "id": spec.cell_id, "name": spec.name}[what]


OmegaConf.register_new_resolver("cell", _cell_resolver, replace=True)


def _pause_for_crash_tests(name: str) -> None:
    """SWEEP_TEST_PAUSE="<part of a cell name>=<seconds>" holds matching cells just before
    their record is written, so tests can kill or preempt a cell mid-run deterministically."""
    pattern, _, seconds = os.environ.get("SWEEP_TEST_PAUSE", "").partition("=")
    if pattern and pattern in name:
        log.info("SWEEP_TEST_PAUSE: holding %s for %s s", name, seconds)
        time.sleep(float(seconds))


def run_cell(cfg: DictConfig) -> dict[str, Any]:
    """Run one cell (or skip it when its record is complete, or while another live owner holds
    its lease: see sweep.lease) and return its record."""
    started = time.perf_counter()
    cell_dir = Path(HydraConfig.get().runtime.output_dir)
    redact_files(cell_dir / ".hydra")  # Hydra keeps the command line verbatim, secrets typed on it too
    spec = cell_spec(cfg)
    run = parse_sweep(cfg.sweep)
    force = run.force
    sweep_id = cfg.sweep.id
    if rec.is_complete(cell_dir, spec.cell_id) and not force:
        log.info("%s is already done (%s); skipping — sweep.force=true recomputes it", spec.name, cell_dir)
        return rec.read_record(cell_dir)

    import torch  # heavy imports only once there is work to do

    from sweep.cache import ArtifactCache
    from sweep.cell import measure
    from sweep.tracking import tracker

    check_device(spec.settings.compute, cuda_devices=torch.cuda.device_count())
    settings = spec.settings.cache
    cache = ArtifactCache(to_absolute_path(settings.dir), enabled=settings.enabled, verify=settings.verify)
    base = rec.cell_fields(spec, cfg, sweep_id)
    try:
        lease = Lease.acquire(cell_dir, stale_after_s=run.stale_after_s, heartbeat_s=run.heartbeat_s)
    except LeaseHeld as held:  # another launch runs it: measuring it here too would count it twice
        log.info("%s is running elsewhere (%s); skipping it here", spec.name, held)
        return {**base, "status": "running elsewhere", "owner": held.holder}
    if rec.is_complete(cell_dir, spec.cell_id) and not force:
        log.info("%s was finished elsewhere while this launch waited; skipping", spec.name)
        lease.release()
        return rec.read_record(cell_dir)
    try:
        with tracker(cfg, spec, sweep_id, cell_dir) as track:
            try:
                result = measure(cfg, spec, cache)
                if cfg.outcomes.save:
                    rec.write_outcomes(cell_dir, result.outcomes)
                record = {**base, "status": "complete", "metrics": result.metrics, "counts": result.counts,
                          "compute": result.compute,
                          "timings": {**result.timings, "total_s": time.perf_counter() - started},
                          "artifacts": result.artifacts,
                          "versions": {**rec.versions(), "model_revision": result.model_revision},
                          "outcomes_file": rec.OUTCOMES_FILE if cfg.outcomes.save else None}
                _pause_for_crash_tests(spec.name)
                if not lease.is_mine():  # taken over after missed heartbeats: the new owner writes it
                    log.warning("%s: another owner took this cell's lease over while it was measured here; "
                                "this measurement is dropped so that the cell has one writer", spec.name)
                    lease.release()  # stops the heartbeat; the lease itself is the new owner's
                    return {**base, "status": "taken over"}
                track.log_record(record, cell_dir / rec.OUTCOMES_FILE if cfg.outcomes.save else None)
                rec.write_record(cell_dir, record)
            except SweepError:
                raise
            except Exception as error:
                if not rec.is_complete(cell_dir, spec.cell_id):  # never overwrite a finished measurement
                    failed = {**base, "status": "failed", "error": f"{type(error).__name__}: {error}",
                              "traceback": traceback.format_exc(), "versions": rec.versions()}
                    rec.write_record(cell_dir, failed)
                    track.log_record(failed, None)
                raise
    except SweepError:
        lease.release(forget=True)  # bad input, not a failed measurement: leave the cell pending
        raise
    except Exception:
        lease.release()
        raise
    lease.release()  # not on SystemExit (preemption, kill): the lease then dies with its process or job
    log.info("%s: %s", spec.name, ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()))
    return record


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    mark_entered()
    redact_logs()
    try:
        return run_cell(cfg)
    except SweepError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the cell sweeper collects and reports failures
        print(f"error: {error}", file=sys.stderr)
        _remove_if_only_hydra_files(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)


def _remove_if_only_hydra_files(folder: Path) -> None:
    """Bad input leaves nothing behind: Hydra made the job's folder (its .hydra/ and log)
    before the settings could be checked; a folder holding anything else is kept."""
    ours = {".hydra", f"{HydraConfig.get().job.name}.log"}
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= ours:
        shutil.rmtree(folder, ignore_errors=True)
        for parent in folder.parents:
            if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def main() -> None:
    """Exit 2 for every kind of bad input: Hydra reports an unknown config group, option or
    an unparsable override itself (exit 1) before any code of ours runs."""
    try:
        _hydra_main()
    except SystemExit as exit:
        if exit.code == 1 and not entered():
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
