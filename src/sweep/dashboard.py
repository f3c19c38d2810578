"""The study on the W&B dashboard: one summary run per sweep, beside its cell runs.

The cell runs give one summary row each; the study's figure is a reduction over hundreds of
them, which W&B cannot draw from rows alone. So once a sweep's units have returned (the
cell sweeper calls `sweep-aggregate <sweep folder> wandb.log=true`), one run in the sweep's
group, `job_type=aggregate`, logs what `sweep-aggregate` made: the results table, every
drawn figure as an image, and per model a native W&B line plot of accuracy vs layer (the series of
`main_result`, means over seeds), so the main figure is live in the project.

The run id is derived from the sweep id, so aggregating again resumes the same run instead
of adding one, and everything is logged in one step and mirrored in the summary, which is
what the run's panels show. Re-running replaces: the earlier attempts' local folders are
removed (one folder, holding only the new content), and the summary keys the new content
no longer has (a model dropped from the sweep) are deleted. Online, the run's history keeps
one step per aggregation; every panel shows the newest.

The summary run follows the cell runs' rules (`sweep.tracking.wandb_run`): online only when
it can work, any W&B failure turns it into an offline run with one message, and nothing
here fails the sweep or the aggregation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from sweep.aggregate import SweepTable
from sweep.conf_path import CONF_DIR
from sweep.plotting import CHANCE, MAIN_SERIES, FigureResult, Line, chance_level, mean_line
from sweep.settings import Wandb, parse_fixed
from sweep.tracking import WANDB_CACHE, check_mode, run_id, wandb_run

JOB_TYPE = "aggregate"
RESULTS_KEY = "results"
FIGURE_KEY = "figures/{name}"
LINE_KEY = "accuracy_vs_layer/{model}"
SWEEP_CONFIG = "multirun.yaml"  # written by the cell sweeper: the settings the sweep's cells ran with


def summary_run_id(sweep_id: str) -> str:
    """Stable per sweep (cell ids are 16 hex digits, so no cell run can have it)."""
    return run_id(sweep_id, JOB_TYPE)


def summary_settings(sweep_dir: Path | None, *, project: str | None = None, entity: str | None = None) -> Wandb:
    """The W&B settings of a sweep's summary run, checked: those its cells ran with (the
    `wandb:` node of the sweep's multirun.yaml), else conf/config.yaml's; `project` and
    `entity` (sweep-aggregate source=wandb) name where the cells' runs are. Raises
    ConfigError for a bad setting or WANDB_MODE, before any work."""
    saved = sweep_dir / SWEEP_CONFIG if sweep_dir is not None else None
    source = saved if saved is not None and saved.is_file() else CONF_DIR / "config.yaml"
    node = OmegaConf.to_container(OmegaConf.load(source).wandb, resolve=True)
    node.update({key: value for key, value in (("project", project), ("entity", entity)) if value})
    settings = parse_fixed(Wandb, "wandb", node)
    if os.environ.get("WANDB_MODE"):
        check_mode(os.environ["WANDB_MODE"], "WANDB_MODE")
    return settings


def accuracy_lines(complete: pd.DataFrame) -> dict[str, list[Line]]:
    """Per model, the main figure's series as means over seeds by layer (probe, shuffle with
    each readout), then chance over the model's layers; series without cells are left out."""
    lines: dict[str, list[Line]] = {}
    for model, rows in complete.groupby("model", sort=False):
        found = [mean_line(spec.select(rows), spec.metric, spec.label) for spec in MAIN_SERIES]
        found = [line for line in found if len(line.layers)]
        if not found:
            continue
        level = chance_level(rows)
        if level is not None:
            layers = sorted({int(layer) for line in found for layer in line.layers})
            found.append(Line(CHANCE, np.array(layers), np.full(len(layers), level)))
        lines[str(model)] = found
    return lines


def summary_content(table: SweepTable, figures: Mapping[str, FigureResult] | None) -> dict[str, Any]:
    """What the summary run logs, by key: the table, each drawn figure's PNG, the line plots,
    and the cell counts."""
    import wandb

    data: dict[str, Any] = {RESULTS_KEY: wandb.Table(dataframe=_json_frame(table.frame))}
    for name, figure in (figures or {}).items():
        png = next((path for path in figure.paths if path.suffix == ".png"), None)
        if png is not None:
            data[FIGURE_KEY.format(name=name)] = wandb.Image(str(png), caption="; ".join(figure.notes))
    for model, lines in accuracy_lines(table.complete).items():
        data[LINE_KEY.format(model=model)] = wandb.plot.line_series(
            xs=[line.layers.tolist() for line in lines],
            ys=[line.mean.tolist() for line in lines],
            keys=[line.label for line in lines],
            title=f"{model}: accuracy vs layer (mean over seeds)",
            xname="layer",
        )
    data.update(
        {"cells/complete": len(table.complete), "cells/failed": len(table.failed), "cells/missing": len(table.missing)}
    )
    return data


def _json_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The table with plain Python values: W&B serialises cells as JSON, which has no pd.NA."""
    return frame.astype(object).where(frame.notna(), None)


def log_summary_run(
    table: SweepTable, figures: Mapping[str, FigureResult] | None, settings: Wandb, out_dir: Path
) -> Path | None:
    """The sweep's summary run, in `out_dir/wandb/`; returns its local folder (None: no run
    could start, and a message said why). Never raises for a W&B failure."""
    from sweep.record import versions

    sweep_id = str(table.sweep_id)
    init = dict(
        group=sweep_id,
        job_type=JOB_TYPE,
        name=f"summary-{sweep_id}",
        id=summary_run_id(sweep_id),
        tags=[JOB_TYPE, *settings.tags],
        config={"sweep_id": sweep_id, "source": table.source, "versions": versions()},
    )
    hint = (
        f"The sweep's summary run is in {out_dir / 'wandb'}; upload it later with "
        f"`wandb sync {out_dir / 'wandb'}/offline-run-*`."
    )
    with wandb_run(settings, init, run_dir=out_dir, side_dir=out_dir / WANDB_CACHE, offline_hint=hint) as track:
        track.guarded(
            "logging the sweep's summary to W&B", lambda run: log_replacing(run, summary_content(table, figures))
        )
    return Path(track.run.settings.sync_dir) if track.run is not None else None


def log_replacing(run: Any, data: dict[str, Any]) -> None:
    """Log `data` as the run's one new step, and drop the summary keys an earlier
    aggregation left that `data` no longer has (a resumed run keeps its old summary)."""
    run.log(data)
    kept = set(data) | {f"{key}_table" for key in data}  # a line plot's data is its key + "_table"
    for key in [key for key in run.summary.keys() if not key.startswith("_") and key not in kept]:
        del run.summary[key]
