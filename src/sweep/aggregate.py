"""`sweep-aggregate`: a sweep's cell records as one table, and the study's figures.

Two sources give the same table: the cell folders on disk (`result.json`, and
`outcomes.csv` for the figures' per-example bands) and the W&B runs of the sweep, whose
summary holds exactly `record_row(record)` (the tracker logs it). Both paths go through
`record_row` and `_frame`, so the columns, their order and their dtypes cannot drift apart.

Torch-free on purpose: aggregation runs on login nodes and laptops that only have the
records.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.cellspec import GRID_KEYS
from sweep.errors import SweepError, first_line
from sweep.files import atomic_write_bytes, atomic_write_text
from sweep.intervals import LEVEL, summary_interval
from sweep.interventions import INTERVENTIONS, intervention_label
from sweep.layout import OUTCOMES_FILE, RESULT_FILE, SweepPaths
from sweep.plan import UnreadablePlan, read_plan_file, record_folder
from sweep.record import AXES, COLUMNS, DTYPES, record_row, scalar
from sweep.status import log_files

SORT_KEYS = ["model", "intervention", "token", "readout", "seed", "layer", "cell_id"]
RESULT_FILES = ("results.csv", "results.parquet")
FIGURES_DIR = "figures"
SHOWN_PROBLEMS = 20  # failed/missing lines printed before "... and N more"


class SourceError(SweepError):
    """The records could not be read (W&B unreachable, an unreadable plan.json or
    outcomes file), or they cannot make one table; main() exits 1."""


def _frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> the table: COLUMNS in order, fixed dtypes, a canonical row order (ties
    broken by cell_id, so the order does not depend on file system or API order)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    frame = frame.astype(DTYPES)
    return frame.sort_values(SORT_KEYS, na_position="last", kind="mergesort").reset_index(drop=True)


def _problems(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(columns)).astype("string")


# --------------------------------------------------------------------------- the table


class Outcomes(Mapping[str, pd.DataFrame]):
    """Per-example outcomes by cell_id, read from outcomes.csv on each access and not
    kept: a full sweep's outcomes (hundreds of cells x 50k examples) can exceed memory,
    and a figure reads each cell once."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)

    def __getitem__(self, cell_id: str) -> pd.DataFrame:
        path = self.files[cell_id]
        try:
            return pd.read_csv(path)
        except (OSError, ValueError) as error:
            raise SourceError(f"cannot read the outcomes of cell {cell_id} at {path}: {error}") from error

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class SweepTable:
    """A sweep as data.

    frame    — one row per cell with a record (complete or failed), columns COLUMNS
    failed   — name, error, folder of cells whose record says "failed" (or, from W&B, whose
               run ended without logging one); folder is a W&B run path for W&B sources
    missing  — name, folder of cells that were planned or started but have no record
    outcomes — per-example outcomes by cell_id, or None where the source has none (W&B)
    """

    sweep_id: str | None
    source: str
    frame: pd.DataFrame
    failed: pd.DataFrame
    missing: pd.DataFrame
    outcomes: Outcomes | None

    @property
    def complete(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] == "complete"]


def load_local(sweep_dir: Path) -> SweepTable:
    """Read every `<sweep_dir>/<model>/<cell>/result.json`, and the records plan.json
    (written at launch) says were taken from sweep.results_from. plan.json lists the
    planned cells, so cells that never wrote a record show up as missing; without it, only
    folders where a cell started (started.json) can be reported. Raises SourceError when
    the records hold several configurations of one series (see one_configuration)."""
    sweep_dir = Path(sweep_dir)
    rows, failed, outcome_files, settings = [], [], {}, []
    recorded: set[str] = set()
    plan = _read_plan(sweep_dir)
    taken = [record_folder(sweep_dir, c) / RESULT_FILE for c in (plan or {}).get("cells", []) if c.get("record_dir")]
    for path in [*SweepPaths(sweep_dir).record_files(), *taken]:
        folder = path.parent
        try:
            record = json.loads(path.read_text())
            row = record_row(record)
        except (OSError, ValueError, TypeError) as error:
            failed.append({"name": folder.name, "error": f"unreadable {RESULT_FILE}: {error}", "folder": str(folder)})
            continue
        if row["cell_id"] in recorded:  # in the sweep folder and in results_from: count it once
            continue
        rows.append(row)
        settings.append(compared_settings(record.get("config") or {}))
        recorded.add(row["cell_id"])
        if row["status"] == "failed":
            failed.append({"name": row["name"], "error": row["error"], "folder": str(folder)})
        outcomes = folder / str(record.get("outcomes_file") or OUTCOMES_FILE)
        if outcomes.is_file():
            outcome_files[row["cell_id"]] = outcomes
    one_configuration(rows, settings, sweep_dir)
    missing = _missing_local(sweep_dir, plan, recorded, reported={Path(f["folder"]) for f in failed})
    frame = _frame(rows)
    sweep_id = plan.get("sweep_id") if plan else None
    if sweep_id is None:
        ids = frame["sweep_id"].dropna().unique()
        sweep_id = str(ids[0]) if len(ids) == 1 else sweep_dir.name
    return SweepTable(
        sweep_id=sweep_id,
        source=str(sweep_dir),
        frame=frame,
        failed=_problems(failed, ("name", "error", "folder")),
        missing=_problems(missing, ("name", "folder")),
        outcomes=Outcomes(outcome_files),
    )


def _read_plan(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        return read_plan_file(sweep_dir)
    except UnreadablePlan as error:
        raise SourceError(str(error)) from error


def _missing_local(
    sweep_dir: Path, plan: Mapping[str, Any] | None, recorded: set[str], *, reported: set[Path]
) -> list[dict[str, str]]:
    """Planned cells without a record, then started cells the plan does not know (a
    sweep launched before plan.json existed). `reported`: folders already listed as failed."""
    missing, seen = [], set(reported)
    for cell in (plan or {}).get("cells", []):
        folder = sweep_dir / cell["subdir"]
        seen.add(folder)
        if cell["cell_id"] not in recorded and folder not in reported:
            missing.append({"name": cell["name"], "folder": str(folder)})
    for folder in SweepPaths(sweep_dir).cell_folders():
        if folder not in seen and not (folder / RESULT_FILE).exists():
            missing.append({"name": folder.name, "folder": str(folder)})
    return missing


# --------------------------------------------------------------------------- one configuration per series

SERIES = ("model", "intervention", "variant", "readout")  # what the table averages over seeds and draws over layers
SHOWN_CELLS = 3


def one_configuration(rows: Sequence[Mapping[str, Any]], settings: Sequence[Mapping[str, Any]], where: object) -> None:
    """Refuse records that the table would pool although they measure different things.

    A sweep folder can hold records of several configurations (a YAML file edited between
    launches, a reused sweep.name). The table groups by the grid's axes, so cells of one
    series (model, intervention and its variant, readout) must agree on every other setting, and one
    grid point must be one cell. `settings[i]`: row i's settings as dotted keys. Complete
    rows only: failed ones are never averaged.
    """
    series: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row["status"] == "complete":
            series.setdefault(tuple(row[k] for k in SERIES), []).append(i)
    problems = []
    for (model, intervention, named, readout), members in series.items():
        key = (model, intervention_label(intervention, named), readout)
        points: dict[tuple, set[str]] = {}
        for i in members:
            points.setdefault(tuple(rows[i][k] for k in AXES), set()).add(rows[i]["cell_id"])
        differing = sorted(
            {k for i in members for k in settings[i] if len({repr(settings[j].get(k)) for j in members}) > 1}
        )
        if differing:
            problems.append(
                f"{'/'.join(map(str, key))}: "
                + "; ".join(
                    _variants(k, [(settings[i].get(k), _folder_name(rows[i])) for i in members]) for k in differing
                )
            )
        elif any(len(ids) > 1 for ids in points.values()):
            point, ids = next((p, ids) for p, ids in points.items() if len(ids) > 1)
            problems.append(
                f"{'/'.join(map(str, key))}: {len(ids)} cells at {dict(zip(AXES, point))} "
                f"(cell_ids {', '.join(sorted(ids))}) differ in settings the records do not show "
                f"(records of record format 4 or older hold only part of their identity)"
            )
    if problems:
        raise SourceError(
            f"{where} holds records of different configurations that the table would average together:\n  "
            + "\n  ".join(problems)
            + f"\nsettings that are not grid axes ({', '.join(AXES)}) must agree within a "
            "series. Move the records of the configuration you do not want out of the folder, or give each "
            "configuration its own sweep.name."
        )


def compared_settings(identity: Mapping[str, Any]) -> dict[str, Any]:
    """A record's identity (its `config`) as dotted keys, without the grid's own axes: what
    every cell of one series must agree on."""
    return {k: v for k, v in _flat(identity).items() if k not in GRID_KEYS}


def _variants(key: str, values: Sequence[tuple[Any, str]]) -> str:
    """`intervention.permutation = 'derangement' (2 cells: a-1234abcd, b-...) | 'identity' (1 cell: ...)`."""
    by_value: dict[str, list[str]] = {}
    for value, name in values:
        by_value.setdefault(repr(value), []).append(name)
    shown = [
        f"{value} ({len(names)} cell{'s' * (len(names) > 1)}: {', '.join(sorted(names)[:SHOWN_CELLS])}"
        f"{', ...' if len(names) > SHOWN_CELLS else ''})"
        for value, names in by_value.items()
    ]
    return f"{key} = " + " | ".join(shown)


def _folder_name(row: Mapping[str, Any]) -> str:
    """What tells two cells of one grid point apart on disk: `<name>-<cell_id[:8]>`."""
    return f"{row['name']}-{str(row['cell_id'])[:8]}"


def _flat(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: settings compared and named one leaf at a time."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_wandb(runs: Iterable[Any], sweep_id: str) -> SweepTable:
    """The same table from W&B runs (objects with .summary, .config, .name, .id, .state,
    .group, as `wandb.Api().runs` yields). Runs of other groups are ignored. W&B's own
    summary keys (_runtime, _step, _wandb, ...) are ignored: only COLUMNS are read."""
    rows, failed, missing, compared = [], [], [], []
    for run in runs:
        if run.group != sweep_id:
            continue
        summary = run.summary
        where = _run_path(run)
        if summary.get("cell_id") is None:
            if run.state in ("failed", "crashed", "killed"):
                failed.append(
                    {"name": run.name, "error": f"W&B run {run.state} without logging a record", "folder": where}
                )
            else:
                missing.append({"name": run.name, "folder": where})
            continue
        row = {column: scalar(column, summary.get(column)) for column in COLUMNS}
        rows.append(row)
        compared.append(compared_settings(_run_identity(run)))
        if row["status"] == "failed":
            failed.append({"name": row["name"], "error": row["error"], "folder": where})
    one_configuration(rows, compared, f"W&B group {sweep_id}")
    return SweepTable(
        sweep_id=sweep_id,
        source="wandb",
        frame=_frame(rows),
        failed=_problems(failed, ("name", "error", "folder")),
        missing=_problems(missing, ("name", "folder")),
        outcomes=None,
    )


def _run_identity(run: Any) -> Mapping[str, Any]:
    """The cell's identity that its run's config holds (`identity`, as its record's `config`)."""
    config = run.config if isinstance(run.config, Mapping) else {}
    identity = config.get("identity")
    return identity if isinstance(identity, Mapping) else {}


def _run_path(run: Any) -> str:
    """Where a user finds the run: its URL when the API gave one."""
    return str(getattr(run, "url", None) or f"W&B run {run.id}")


def fetch_wandb_runs(project: str, entity: str | None, sweep_id: str) -> list[Any]:
    """The sweep's runs (one per cell, grouped by sweep id). Needs a reachable W&B server."""
    import wandb

    path = f"{entity}/{project}" if entity else project
    return list(wandb.Api().runs(path, filters={"group": sweep_id}))


# --------------------------------------------------------------------------- files


def write_results(table: SweepTable, out_dir: Path) -> list[Path]:
    """results.csv and results.parquet, each written atomically so a reader (or a
    concurrent aggregation) never sees half a table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = (out_dir / name for name in RESULT_FILES)
    atomic_write_text(csv_path, table.frame.to_csv(index=False))
    buffer = io.BytesIO()
    table.frame.to_parquet(buffer, index=False)
    atomic_write_bytes(parquet_path, buffer.getvalue())
    return [csv_path, parquet_path]


# pandas < 3.1 reads floats from CSV with a converter that can differ from the written value
# in the last bit unless asked for "round_trip"; 3.1 always round-trips and deprecates the option.
_PANDAS = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", pd.__version__).groups())
_ROUND_TRIP = {} if _PANDAS >= (3, 1) else {"float_precision": "round_trip"}


def read_results(path: Path) -> pd.DataFrame:
    """A written results.csv or results.parquet with the table's dtypes. CSV cells are
    read literally (only empty means missing): pandas would otherwise turn strings such as
    "None" or "NA" into missing values."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path).astype(DTYPES)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=DTYPES, keep_default_na=False, na_values=[""], **_ROUND_TRIP)
    raise ValueError(f"{path}: expected a results.csv or results.parquet")


# --------------------------------------------------------------------------- summary text


def summary_text(table: SweepTable) -> str:
    """What a user checks first: how many cells, and accuracy (%) by layer per model and
    series with the half-width of its 95% interval, compact enough for a 100-column terminal."""
    frame = table.frame
    n_complete = int((frame["status"] == "complete").sum())
    lines = [
        f"sweep {table.sweep_id} ({table.source}): {len(frame)} cells with a record — {n_complete} complete, "
        f"{len(table.failed)} failed; {len(table.missing)} missing"
    ]
    pivot = accuracy_pivot(table.complete)
    if not pivot.empty:
        lines += [
            "",
            "accuracy in % by layer, mean over seeds (probe: the layer-L CLS probe of the none cells)",
            *_format_pivot(pivot, _percent),
            "",
            f"± in points: half-width of that mean's {LEVEL:.0%} interval over permutation draws and examples",
            "(docs/science.md, Error bars; ?: one seed of a seeded series, no interval)",
            *_format_pivot(interval_pivot(table.complete), _points),
        ]
    return "\n".join(lines)


def _long(complete: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, series, layer, seed) value the table shows. Series are
    `<intervention>/<readout>`, the intervention named with its variant
    (`shuffle@patches/native`, `knockout@cls_to_patches+after/cls`), and `probe` for the none
    cells' probe accuracy."""
    columns = ["model", "series", "layer", "seed", "cell_id", "n_val", "value"]
    labels = series_labels(complete)
    shown = complete.assign(
        series=[f"{label}/{readout}" for label, readout in zip(labels, complete["readout"])], value=complete["accuracy"]
    )
    probe = complete[(complete["intervention"] == "none") & complete["probe_accuracy"].notna()]
    probe = probe.drop_duplicates(["model", "layer", "seed"])  # the probe does not depend on the readout
    probe = probe.assign(series="probe", value=probe["probe_accuracy"])
    return pd.concat([shown[columns], probe[columns]], ignore_index=True)


def series_labels(rows: pd.DataFrame) -> list[str]:
    """Each row's intervention as the table and figures name it (`interventions.intervention_label`)."""
    return [intervention_label(i, None if pd.isna(v) else v) for i, v in zip(rows["intervention"], rows["variant"])]


def accuracy_pivot(complete: pd.DataFrame) -> pd.DataFrame:
    """(model, series) x layer -> mean accuracy over seeds, plus a `cells` count."""
    long = _long(complete)
    if long.empty:
        return pd.DataFrame()
    return _pivot(long, long.groupby(["model", "series", "layer"])["value"].mean())


def interval_pivot(complete: pd.DataFrame) -> pd.DataFrame:
    """(model, series) x layer -> half-width of the mean's interval (sweep.intervals), from
    the records alone (per-seed accuracies and n_val), so it is the same from W&B as from
    the folders; inf for one seed of a seeded series (no finite interval), NaN where the
    series has no cell at that layer."""
    long = _long(complete)
    if long.empty:
        return pd.DataFrame()
    keys = ["model", "series", "layer"]
    points = long.groupby(keys)
    half_widths = pd.Series([_half_width(point) for _, point in points], index=points.size().index)
    return _pivot(long, half_widths)


def _half_width(point: pd.DataFrame) -> float:
    values = point["value"].dropna()
    n_val = point["n_val"].dropna()
    if values.empty or n_val.empty:
        return math.nan
    seeded = bool(point["seed"].notna().any())
    interval = summary_interval(values.to_numpy(dtype=float), int(n_val.min()), seeded=seeded)
    return math.inf if math.isnan(interval.low) else interval.half_width


def _pivot(long: pd.DataFrame, by_point: pd.Series) -> pd.DataFrame:
    table = by_point.unstack("layer")
    table.insert(0, "cells", long.groupby(["model", "series"])["cell_id"].count())
    order = sorted(table.index, key=lambda key: (key[0], *_series_rank(key[1])))
    return table.loc[order]


def _series_rank(series: str) -> tuple[int, str]:
    """probe first, then interventions in the order the study lists them, then readouts."""
    if series == "probe":
        return -1, ""
    label, _, readout = series.partition("/")
    intervention = label.partition("@")[0]
    known = INTERVENTIONS.names.index(intervention) if intervention in INTERVENTIONS else len(INTERVENTIONS)
    return known, f"{label}/{readout}"


def _percent(value: float) -> str:
    return "   -" if pd.isna(value) else f"{100 * value:4.0f}"


def _points(value: float) -> str:
    """Four characters: " 4.2" below 10 points, "  13" from 10, "   ?" for no interval."""
    if pd.isna(value):
        return "   -"
    if math.isinf(value):
        return "   ?"
    return f"{100 * value:4.1f}" if 100 * value < 9.95 else f"{100 * value:4.0f}"


def _format_pivot(pivot: pd.DataFrame, cell: Callable[[float], str]) -> list[str]:
    layers = [column for column in pivot.columns if column != "cells"]
    model_width = max(5, *(len(model) for model, _ in pivot.index))
    series_width = max(6, *(len(series) for _, series in pivot.index))
    head = f"{'model':<{model_width}}  {'series':<{series_width}}  cells " + "".join(
        f"{f'L{layer}':>4}" for layer in layers
    )
    lines = [head]
    for (model, series), values in pivot.iterrows():
        cells = "".join(cell(values[layer]) for layer in layers)
        lines.append(f"{model:<{model_width}}  {series:<{series_width}}  {int(values['cells']):>5} {cells}")
    return lines


def problems_text(table: SweepTable) -> list[str]:
    """One line per missing or failed cell (the first SHOWN_PROBLEMS of each), pointing at
    where to look: the cell's log file, else its folder."""
    lines = []
    for _, cell in table.missing.head(SHOWN_PROBLEMS).iterrows():
        lines.append(f"missing: {cell['name']} (no record; {cell['folder']})")
    lines += _more(len(table.missing), "missing")
    for _, cell in table.failed.head(SHOWN_PROBLEMS).iterrows():
        error = first_line(cell["error"], 200)
        lines.append(f"failed: {cell['name']} ({error}) log: {_log_of(cell['folder'])}")
    lines += _more(len(table.failed), "failed")
    if len(table.missing) or len(table.failed):
        lines.append("re-launching the sweep's command runs only the cells that are not done")
    return lines


def _more(count: int, what: str) -> list[str]:
    if count <= SHOWN_PROBLEMS:
        return []
    return [f"... and {count - SHOWN_PROBLEMS} more {what} (sweep-status <sweep folder> cells=true lists every cell)"]


def _log_of(folder: str) -> str:
    path = Path(folder)
    logs = log_files(path) if path.is_dir() else []
    return ", ".join(str(log) for log in logs) or folder
