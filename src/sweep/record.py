"""The cell's record: `result.json` (documented in docs/results.md), its outcomes file,
and the flat row of the results table that a record becomes (`record_row`: the local
table's row and the W&B run's summary alike, so both sources give the same table).

`result.json` is written atomically and last, so its presence with status "complete" is
what "this cell is done" means everywhere (resume, status, aggregation).
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sweep.cellspec import CellSpec
from sweep.files import atomic_write_json, atomic_write_text
from sweep.interventions import variant
from sweep.layout import OUTCOMES_FILE, RESULT_FILE
from sweep.redaction import redact_tree

#: The layout of result.json (docs/results.md), written into every record as `record_format`.
#: Bump it when a record gains a field or a metric; it is no part of a cell id, so existing
#: cells stay done (their records lack the new field, their table cells stay empty). What a
#: cell id means is `cellspec.IDENTITY_FORMAT`. 5: `config` holds the whole identity; 6: this
#: field.
RECORD_FORMAT = 6

PACKAGES = ("sweep", "torch", "transformers", "datasets", "hydra-core", "submitit", "wandb", "scikit-learn", "numpy")


def read_record(cell_dir: Path) -> dict[str, Any] | None:
    """The cell's record, or None when there is none (or it cannot be parsed)."""
    try:
        return json.loads((cell_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(cell_dir: Path, cell_id: str) -> bool:
    record = read_record(cell_dir)
    return record is not None and record.get("status") == "complete" and record.get("cell_id") == cell_id


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    found["git_commit"] = _git_commit()
    return found


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cell_fields(spec: CellSpec, cfg: Mapping[str, Any], sweep_id: str | None) -> dict[str, Any]:
    """The record's identifying part, shared by complete and failed records."""
    return {
        "record_format": RECORD_FORMAT,
        "cell_id": spec.cell_id,
        "name": spec.name,
        "sweep_id": sweep_id,
        "model": spec.model,
        "layer": spec.layer,
        "n_layers": spec.n_layers,
        "intervention": spec.intervention,
        "readout": spec.readout,
        "token": spec.token,
        "seed": spec.seed,
        "config": redact_tree(spec.science),  # the whole identity: what the table compares within a series
    }


def write_outcomes(cell_dir: Path, outcomes: Mapping[str, Any]) -> None:
    columns = list(outcomes)
    rows = zip(*(outcomes[c].tolist() for c in columns))
    text = (
        ",".join(["example", *columns])
        + "\n"
        + "".join(",".join(map(str, (i, *row))) + "\n" for i, row in enumerate(rows))
    )
    atomic_write_text(cell_dir / OUTCOMES_FILE, text)


def write_record(cell_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(cell_dir / RESULT_FILE, record)


# --------------------------------------------------------------------------- the table's schema

METRICS = (
    "accuracy",
    "top5",
    "chance",
    "donor_accuracy",
    "donor_agreement",
    "probe_accuracy",
    "last_probe_accuracy",
    "projection_accuracy",
    "projection_top5",
    "identifiability",
    "identifiability_exact",
)

# Column -> kind. One definition for both sources: the kind fixes the pandas dtype, so a
# column that happens to be all-missing in one source still compares equal to the other.
COLUMN_KINDS: dict[str, str] = {
    "cell_id": "str",
    "name": "str",
    "sweep_id": "str",
    "status": "str",
    "model": "str",
    "layer": "int",
    "n_layers": "int",
    "intervention": "str",
    "token": "str",
    "variant": "str",
    "readout": "str",
    "seed": "int",
    "data": "str",
    "permutation": "str",
    "probe_method": "str",
    "train_per_class": "int",
    "probe_settings": "str",  # what a head fitted here depends on (sweep.reference)
    **{metric: "float" for metric in METRICS},
    "probe_after": "str",  # JSON {layer: accuracy} (see probe_after_text)
    "n_train": "int",
    "n_val": "int",
    "n_classes": "int",
    "unit": "str",
    "block_calls": "float",
    "resumed_rows": "int",
    "device": "str",
    "dtype": "str",
    "total_s": "float",
    "git_commit": "str",
    "model_revision": "str",
    "error": "str",
}
COLUMNS: tuple[str, ...] = tuple(COLUMN_KINDS)
_DTYPES = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}
DTYPES: dict[str, str] = {column: _DTYPES[kind] for column, kind in COLUMN_KINDS.items()}

REQUIRED_FIELDS = ("cell_id", "name", "status", "model", "layer", "intervention", "readout", "seed")

#: what identifies a grid point of a sweep (and what W&B runs are grouped and filtered by)
AXES = ("model", "layer", "intervention", "token", "readout", "seed")


# --------------------------------------------------------------------------- the row of a record


def record_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat row of one cell, in COLUMNS order, with JSON-scalar values only.

    It is both the local table's row and what the W&B tracker logs as the run summary, so
    the W&B path rebuilds rows identical to the local ones. Failed records have no
    metrics, counts or compute: those columns are None.
    """
    absent = [key for key in REQUIRED_FIELDS if key not in record]
    if absent:
        raise ValueError(f"not a cell record (see docs/results.md): it lacks {', '.join(absent)}")
    config = record.get("config") or {}
    metrics = record.get("metrics") or {}
    counts = record.get("counts") or {}
    compute = record.get("compute") or {}
    versions = record.get("versions") or {}
    row = {
        **{
            key: record.get(key)
            for key in (
                "cell_id",
                "name",
                "sweep_id",
                "status",
                "model",
                "layer",
                "n_layers",
                "intervention",
                "token",
                "readout",
                "seed",
            )
        },
        "variant": variant(str(record["intervention"]), config.get("intervention") or {}),
        "data": (config.get("data") or {}).get("name"),
        "permutation": (config.get("intervention") or {}).get("permutation"),
        "probe_method": (config.get("probe") or {}).get("method"),
        "train_per_class": (config.get("data") or {}).get("train_per_class"),
        "probe_settings": probe_settings_text((config.get("probe") or {}).get("settings")),
        **{metric: metrics.get(metric) for metric in METRICS},
        "probe_after": probe_after_text(metrics.get("probe_after")),
        **{key: counts.get(key) for key in ("n_train", "n_val", "n_classes")},
        "unit": record.get("unit"),
        **{key: compute.get(key) for key in ("block_calls", "resumed_rows", "device", "dtype")},
        "total_s": (record.get("timings") or {}).get("total_s"),
        "git_commit": versions.get("git_commit"),
        "model_revision": versions.get("model_revision"),
        "error": record.get("error"),
    }
    return {column: scalar(column, row[column]) for column in COLUMNS}


def probe_settings_text(settings: Mapping[str, Any] | None) -> str | None:
    """`config.probe.settings` as the table's one string cell: JSON with sorted keys, so
    equal settings give equal text (the reference check compares it, sweep.reference)."""
    return None if settings is None else json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def probe_after_text(probe_after: Mapping[str, float] | None) -> str | None:
    """`metrics.probe_after` ({layer: accuracy}) as the table's one string cell: JSON with
    the layers in order, so a row stays flat (CSV, parquet, a W&B summary) and
    `parse_probe_after` reads the vector back."""
    if probe_after is None:
        return None
    return json.dumps({str(layer): probe_after[layer] for layer in sorted(probe_after, key=int)}, separators=(",", ":"))


def parse_probe_after(text: str | None) -> dict[int, float]:
    """The table's `probe_after` cell back as {layer: accuracy} (empty when absent)."""
    if text is None or text == "":
        return {}
    return {int(layer): float(value) for layer, value in json.loads(text).items()}


def scalar(column: str, value: Any) -> str | int | float | bool | None:
    """Plain Python scalars only: W&B summaries and CSV cells hold nothing else, and the
    tracker hands in-memory values (numpy/torch scalars have .item())."""
    if value is not None and not isinstance(value, (str, int, float, bool)) and hasattr(value, "item"):
        value = value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"column {column!r} must hold a str, int, float, bool or None, not {type(value).__name__}: {value!r}"
    )
