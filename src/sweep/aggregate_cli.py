"""`sweep-aggregate`: a sweep's records into results.csv / results.parquet, a printed
summary, the study's figures, and (wandb.log=true) the sweep's W&B summary run.

The command line only; the table is `sweep.aggregate`'s, the figures `sweep.plotting`'s,
the summary run `sweep.dashboard`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.aggregate import (
    FIGURES_DIR,
    SourceError,
    SweepTable,
    fetch_wandb_runs,
    load_local,
    load_wandb,
    problems_text,
    summary_text,
    write_results,
)
from sweep.cli import Command, Setting, UsageError
from sweep.errors import ConfigError
from sweep.files import WriteFailed
from sweep.layout import SweepPaths
from sweep.reference import reference_warnings
from sweep.rules import Flag, OneOf, Optional, Text

COMMAND = Command(
    prog="sweep-aggregate",
    summary="Reads a sweep's cell records into results.csv and results.parquet, prints accuracy by layer, lists "
    "missing and failed cells, and draws the study's figures into <out>/figures. Sweeps live in "
    "multirun/<sweep id> (the sweep.root setting of sweep-run); source=wandb reads the same table from "
    "the sweep's W&B runs instead (wandb.project=<project> sweep.name=<sweep id>).",
    words=(("<sweep folder>", "the sweep's folder, e.g. multirun/<sweep id> (source=local)"),),
    settings={
        "source": Setting(OneOf("local", "wandb"), "local", "where the records come from"),
        "out": Setting(
            Optional(Text()),
            None,
            "where tables and figures go (default: the sweep folder; aggregate/<sweep id> for wandb)",
        ),
        "figures": Setting(Flag(), True, "draw the figures"),
        "wandb.project": Setting(Optional(Text()), None, "W&B project (source=wandb)"),
        "wandb.entity": Setting(Optional(Text()), None, "W&B entity (default: your W&B default entity)"),
        "sweep.name": Setting(Optional(Text()), None, "the sweep id, i.e. the runs' W&B group (source=wandb)"),
        "wandb.log": Setting(
            Flag(),
            False,
            "log the table, figures and accuracy-vs-layer plots as the sweep's "
            "summary run in its W&B group (docs/tracking.md)",
        ),
    },
)


@dataclass(frozen=True)
class Options:
    source: str
    sweep_dir: Path | None
    sweep_name: str | None
    project: str | None
    entity: str | None
    out: Path | None
    figures: bool
    wandb_log: bool


def parse_args(argv: Sequence[str]) -> Options | None:
    """None means help was asked for."""
    parsed = COMMAND.parse(argv)
    if parsed is None:
        return None
    words, settings = parsed
    options = Options(
        source=settings["source"],
        sweep_dir=Path(words[0]) if words else None,
        sweep_name=settings["sweep.name"],
        project=settings["wandb.project"],
        entity=settings["wandb.entity"],
        out=Path(settings["out"]) if settings["out"] else None,
        figures=settings["figures"],
        wandb_log=settings["wandb.log"],
    )
    _check_source(options)
    return options


def _check_source(options: Options) -> None:
    if options.source == "local":
        wandb_keys = [
            k
            for k, v in (
                ("sweep.name", options.sweep_name),
                ("wandb.project", options.project),
                ("wandb.entity", options.entity),
            )
            if v
        ]
        if wandb_keys:
            raise UsageError(
                f"{', '.join(wandb_keys)} only apply to source=wandb; a local sweep is named by its "
                f"folder: sweep-aggregate multirun/<sweep id>"
            )
        if options.sweep_dir is None:
            raise UsageError("which sweep? give its folder: sweep-aggregate multirun/<sweep id>")
        if not options.sweep_dir.is_dir():
            raise UsageError(
                f"{options.sweep_dir} does not exist or is not a folder; sweeps live in "
                f"multirun/<sweep id> (the sweep.root setting of sweep-run)"
            )
    else:
        if options.sweep_dir is not None:
            raise UsageError(
                f"source=wandb reads runs from W&B, not a folder ({options.sweep_dir}); "
                f"name the sweep with sweep.name=<sweep id>"
            )
        absent = [k for k, v in (("wandb.project", options.project), ("sweep.name", options.sweep_name)) if not v]
        if absent:
            raise UsageError(f"source=wandb needs {' and '.join(absent)}")


def load(options: Options) -> tuple[SweepTable, Path]:
    """The table, and the folder its outputs go to."""
    if options.source == "local":
        why = SweepPaths(options.sweep_dir).why_not_a_sweep()
        if why:
            raise UsageError(why)
        table = load_local(options.sweep_dir)
        return table, options.out or options.sweep_dir
    try:
        runs = fetch_wandb_runs(options.project, options.entity, options.sweep_name)
    except Exception as error:  # wandb raises its own types for auth, network and missing projects
        raise SourceError(
            f"could not read the runs of group {options.sweep_name} in W&B project "
            f"{options.project}: {type(error).__name__}: {error}"
        ) from error
    table = load_wandb(runs, options.sweep_name)
    return table, options.out or Path("aggregate") / options.sweep_name


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when a table was written (even with missing or failed cells: it draws what
    it has), 1 when there was nothing to read or its outputs could not be written (after
    the table is printed: reading needs no write), 2 on usage errors."""
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        if options is None:
            print(COMMAND.usage())
            return 0
        summary_run = _summary_settings(options)
        table, out_dir = load(options)
    except UsageError as error:
        print(f"sweep-aggregate: error: {error}\n\n{COMMAND.usage()}", file=sys.stderr)
        return 2
    except SourceError as error:
        print(f"sweep-aggregate: error: {error}", file=sys.stderr)
        return 1
    print(summary_text(table))
    for line in problems_text(table) + reference_warnings(table.complete):
        print(line)
    if table.frame.empty:
        print(
            "sweep-aggregate: no cell has a record yet; nothing written (sweep-status shows their state)",
            file=sys.stderr,
        )
        return 1
    try:
        written = write_results(table, out_dir)
        print(f"wrote {', '.join(str(p) for p in written)}")
        figures = None
        if options.figures:
            figures = _draw(table, out_dir / FIGURES_DIR)
    except SourceError as error:
        print(f"sweep-aggregate: error while drawing: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a read-only sweep folder (an archive), a full disk: the table above stands
        print(
            f"sweep-aggregate: error: {WriteFailed.of(error.filename or out_dir, error)}; write the table "
            f"and figures elsewhere with out=<folder>",
            file=sys.stderr,
        )
        return 1
    if summary_run is not None:
        from sweep.dashboard import log_summary_run  # wandb is slow to import; only when logging

        folder = log_summary_run(table, figures, summary_run, out_dir)
        if folder is not None:
            print(f"W&B: the sweep's summary run (group {table.sweep_id}, job_type aggregate) is in {folder}")
    return 0


def _summary_settings(options: Options) -> Any:
    """The checked W&B settings of the summary run (wandb.log=true), or None: a bad setting
    stops the command before the table is read."""
    if not options.wandb_log:
        return None
    from sweep.dashboard import summary_settings

    try:
        return summary_settings(options.sweep_dir, project=options.project, entity=options.entity)
    except ConfigError as error:
        raise UsageError(f"wandb.log=true: {error}") from error


def _draw(table: SweepTable, figures_dir: Path) -> dict[str, Any]:
    from sweep.plotting import draw_figures  # matplotlib is slow to import; only when drawing

    figures = draw_figures(table, figures_dir)
    for name, figure in figures.items():
        if figure.skipped:
            print(f"figure {name}: skipped ({figure.skipped})")
            continue
        print(f"figure {name}: {', '.join(str(p) for p in figure.paths)}")
        for note in figure.notes:
            print(f"  note: {note}")
    return figures


if __name__ == "__main__":
    sys.exit(main())
