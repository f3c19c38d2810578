"""`hydra/sweeper=cells`: Hydra's grid sweep, made resumable and exactly-once.

Before launching, every grid point becomes a cell with an identity (`sweep.plan`):
points a model cannot run (a layer it lacks, a readout it lacks) are skipped with a
line each, cells with a complete record are skipped, cells whose lease a live owner
holds (another launch, a SLURM job) are not launched again, and the rest go to whatever
launcher is configured (basic, submitit_local, submitit_slurm). A failing cell does not
stop the others; the sweep ends with a summary read from the records on disk.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules without
# registering them in sys.modules, and dataclasses then cannot resolve string annotations.
import logging
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweep.cell_state import stale_progress
from sweep.conf_path import check_not_shadowed
from sweep.errors import SweepError, first_line, mark_entered
from sweep.files import WriteFailed
from sweep.plan import Dimension, GroupComposer, Plan, derive_sweep_id, describe, make_plan, write_plan_file
from sweep.redaction import redact, redact_file, redact_logs
from sweep.settings import check_cache_dir, check_device, cuda_visible, parse_sweep
from sweep.status import summarise_cells
from sweep.units import Unit, make_units, preparation_units, write_unit

log = logging.getLogger(__name__)


@dataclass
class CellSweeperConf:
    _target_: str = "hydra_plugins.sweep_cells.cell_sweeper.CellSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    # A union of grids: each entry's axes are laid over `params` (command-line overrides
    # still win), e.g. seeds for the shuffle but one seed for deterministic controls.
    grids: list[dict[str, str]] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="cells", node=CellSweeperConf, provider="sweep")


class CellSweeper(Sweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.grids = [dict(g) for g in grids] if grids else [{}]
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: list[str]) -> Any:
        mark_entered()
        redact_logs()
        try:
            return self._sweep(arguments)
        except SweepError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except OSError as error:  # the sweep folder cannot be written (a full disk, a read-only mount)
            print(f"error: {WriteFailed.of(error.filename, error) if error.filename else error}", file=sys.stderr)
            sys.exit(1)

    # -- the grid ---------------------------------------------------------------------
    def _dimensions(self, grid: dict[str, str], arguments: list[str]) -> list[Dimension]:
        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        by_key: dict[str, Dimension] = {}
        laid = {**self.params, **grid}
        for override in parser.parse_overrides([f"{k}={v}" for k, v in laid.items()] + arguments):
            key = override.get_key_element()
            is_group = loader.repository.group_exists(override.key_or_group)
            if override.is_sweep_override():
                strings = tuple(f"{key}={v}" for v in override.sweep_string_iterator())
                values = tuple(override.sweep_iterator())
            else:
                strings, values = (f"{key}={override.get_value_element_as_str()}",), (override.value(),)
            by_key[key.lstrip("+~")] = Dimension(key, is_group, strings, values)  # later ones win
        return list(by_key.values())

    def _compose(self, groups: tuple) -> dict[str, Any]:
        """The resolved config (without Hydra's node) for one set of group choices."""
        cfg = self.hydra_context.config_loader.load_configuration(
            config_name=self.config.hydra.job.config_name,
            overrides=list(self.config.hydra.overrides.hydra) + list(groups),
            run_mode=RunMode.RUN,
        )
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)

    def _plan(self, arguments: list[str], *, force: bool) -> Plan:
        grids = [self._dimensions(grid, arguments) for grid in self.grids]
        experiment = self.config.hydra.runtime.choices.get("experiment")
        sweep_id = derive_sweep_id(
            self.config.sweep.name, experiment, [s for dims in grids for d in dims for s in d.strings]
        )
        with read_write(self.config), open_dict(self.config):
            self.config.sweep.id = sweep_id
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        return make_plan(
            grids, GroupComposer(self._compose), sweep_id, sweep_dir, list(self.config.sweep.results_from), force=force
        )

    # -- running it -------------------------------------------------------------------
    def _sweep(self, arguments: list[str]) -> Any:
        check_not_shadowed(list(self.config.hydra.runtime.config_sources))
        run = parse_sweep(self.config.sweep)
        plan = self._plan(arguments, force=run.force)
        self._check_launcher(plan, dry_run=run.dry_run)
        print(redact(describe(plan, make_units(plan.pending, run.unit), dry_run=run.dry_run)), flush=True)
        if run.dry_run:
            return []
        plan.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_plan_file(plan)  # also when nothing is left to run: it says where results_from cells have their record
        _remove_stale_checkpoints(plan)
        if not plan.pending:
            return []
        OmegaConf.save(self.config, plan.sweep_dir / "multirun.yaml")
        redact_file(plan.sweep_dir / "multirun.yaml")  # it keeps the command line verbatim
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=self.task_function, config=self.config
        )
        units = make_units(plan.pending, run.unit)
        errors: dict[str, str] = {}
        preparing = preparation_units(units)
        if preparing:  # split models: their artifacts first, so no unit waits on another's lock
            self._launch(launcher, plan, preparing, errors)
        returns = self._launch(launcher, plan, units, errors)
        summary = summarise_cells(
            [(c.spec, plan.sweep_dir / c.spec.subdir) for c in plan.pending if c.spec], finished=True, errors=errors
        )
        print(summary.text(), flush=True)
        _summary_run(plan, self.config)
        if summary.failed or summary.missing or summary.corrupt:  # cells running elsewhere are not this launch's
            sys.exit(1)
        return returns

    def _launch(self, launcher: Any, plan: Plan, units: list[Unit], errors: dict[str, str]) -> list[Any]:
        """One Hydra job per unit, in batches of `max_batch_size`. Returns one entry per unit, in
        the order of `units`: its JobReturn, or the launcher's error where its batch's `launch`
        raised, so that a batch that raised shifts no later unit's return onto another unit.
        `errors` gets, per cell, the first line of what its unit's job raised or of the
        launcher's error: bad input and a killed job leave no record to read it from."""
        for unit in units:
            write_unit(plan.sweep_dir, unit)
        size = self.max_batch_size or len(units)
        returns: list[Any] = []
        for start in range(0, len(units), size):
            batch = units[start : start + size]
            try:
                launched: list[Any] = list(
                    launcher.launch([u.overrides(plan.sweep_id) for u in batch], initial_job_idx=start)
                )
            except Exception as error:  # a launcher failure (e.g. a job killed) must not hide the rest
                if _is_submission_error(error):
                    raise SweepError(f"the launcher could not submit the units: {error}") from error
                log.error("launcher reported: %s: %s", type(error).__name__, error)
                launched = [error] * len(batch)
            for unit, outcome in zip(batch, launched, strict=True):  # a launcher returns one per job, in order
                returns.append(outcome)
                failure = (
                    outcome
                    if isinstance(outcome, Exception)
                    else (outcome._return_value if outcome.status == JobStatus.FAILED else None)
                )
                if failure is not None:
                    for cell in unit.cells:
                        errors[cell.spec.name] = _first_line(failure)
        return returns

    def _check_launcher(self, plan: Plan, *, dry_run: bool) -> None:
        """What the plan can know about where the cells will run: a local launcher runs them
        here, so a GPU they ask for must be here and their cache.dir writable; SLURM needs
        `sbatch`."""
        target = str(self.config.hydra.launcher.get("_target_", ""))
        if "Slurm" not in target:
            for cell in plan.pending:
                check_device(cell.spec.settings.compute, cuda_devices=int(cuda_visible()))
            if not dry_run:  # the check makes the folder (a dry run writes nothing)
                for directory in sorted({cell.spec.settings.cache.dir for cell in plan.pending}):
                    check_cache_dir(directory, Path(directory).expanduser().absolute())
        if "Slurm" in target and shutil.which("sbatch") is None and plan.pending and not dry_run:
            raise SweepError(
                "hydra/launcher=slurm submits to SLURM, but `sbatch` is not on this machine's PATH. Run where SLURM "
                "is installed, start the local test cluster (launchers/local-slurm/start.sh), or run locally with "
                "hydra/launcher=basic or hydra/launcher=submitit_local"
            )


def _summary_run(plan: Plan, config: DictConfig) -> None:
    """logger=wandb: once every unit has returned, the sweep's aggregation with its summary
    run in W&B (`sweep-aggregate <sweep folder> wandb.log=true`, sweep.dashboard). The
    records are the sweep's result: nothing here may fail it, so any error is one warning."""
    if str(config.logger.name) != "wandb":
        return
    from sweep.aggregate_cli import main as aggregate

    try:
        code = aggregate([str(plan.sweep_dir), "wandb.log=true"])
    except Exception as error:
        code = f"{type(error).__name__}: {error}"
    if code != 0:
        log.warning(
            "the sweep's aggregation for W&B did not complete (%s); the records are unaffected. Run "
            "`sweep-aggregate %s wandb.log=true` to retry.",
            code,
            plan.sweep_dir,
        )


def _first_line(error: object) -> str:
    return f"{type(error).__name__}: {first_line(error, 600)}"


def _is_submission_error(error: BaseException) -> bool:
    """Whether submitit raised `error` while submitting (sbatch refused the array, or could not
    run), not while collecting a job's result (a unit killed, preempted past its requeues).
    A refused submission stops the sweep: every later batch would be refused the same way.
    Decided by where it was raised, inside `Executor.submit` / `map_array` / `submit_array`
    (every submission goes through one of them), not by its wording, which names paths."""
    import submitit  # not at import: Hydra imports every plugin to discover them

    if isinstance(error, submitit.core.utils.FailedSubmissionError):
        return True
    submitting = {
        method.__code__
        for method in (submitit.Executor.submit, submitit.Executor.map_array, submitit.Executor.submit_array)
    }
    return any(frame.f_code in submitting for frame, _ in traceback.walk_tb(error.__traceback__))


def _remove_stale_checkpoints(plan: Plan) -> None:
    """A unit killed between writing a cell's record and removing that cell's checkpoint
    leaves the checkpoint beside a complete record; the re-launch that finds the cell done
    removes it (a live owner's, e.g. of a forced re-run elsewhere, is left alone)."""
    for cell in plan.done:
        stale = stale_progress(cell.done_at, cell.spec.cell_id)
        if stale is not None:
            stale.unlink(missing_ok=True)
