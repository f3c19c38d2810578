"""A synthetic sweep folder in the documented record format (docs/results.md), for tests of
everything downstream of the cells (aggregation, plotting) without training a model.

Metrics are computed from the written outcomes, exactly as the cell computes them, so a
statistic recomputed from outcomes.csv matches the record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sweep.cellspec import IDENTITY_FORMAT

N_CLASSES = 10
N_VAL = 200
MODELS = {"tiny_a": 3, "tiny_b": 4}  # name -> number of blocks (layers 0..n)
SEEDS = (0, 1)
CONTROLS = ("zero", "mean")


@dataclass
class FakeSweep:
    sweep_dir: Path
    sweep_id: str
    records: list[dict[str, Any]] = field(default_factory=list)  # every record written, failed included
    failed_name: str | None = None
    missing_name: str | None = None

    @property
    def names(self) -> set[str]:
        return {record["name"] for record in self.records}


def cell_name(model: str, layer: int, intervention: str, readout: str, seed: int) -> str:
    return f"{model}-L{layer:02d}-{intervention}-{readout}-s{seed}"


def cell_id(name: str, sweep_id: str) -> str:
    return hashlib.sha256(f"{sweep_id}/{name}".encode()).hexdigest()[:16]


def subdir(model: str, name: str, sweep_id: str) -> str:
    return f"{model}/{name}-{cell_id(name, sweep_id)[:8]}"


def outcomes(
    accuracy: float,
    *,
    n_val: int,
    seed: int,
    probe_accuracy: float | None = None,
    projection_accuracy: float | None = None,
) -> dict[str, np.ndarray]:
    """Per-example columns with exactly round(accuracy * n_val) correct examples, placed at
    random (seeded) so that the bands' example part has something to measure."""
    rng = np.random.default_rng(seed)
    label = np.arange(n_val) % N_CLASSES

    def ranks(acc: float) -> np.ndarray:
        correct = np.zeros(n_val, dtype=bool)
        correct[rng.permutation(n_val)[: round(acc * n_val)]] = True
        return np.where(correct, 0, rng.integers(1, N_CLASSES, n_val))

    rank = ranks(accuracy)
    columns = {"label": label, "predicted": np.where(rank == 0, label, (label + 1) % N_CLASSES), "rank": rank}
    if probe_accuracy is not None:
        projection_rank = ranks(projection_accuracy)
        columns["projection_predicted"] = np.where(projection_rank == 0, label, (label + 1) % N_CLASSES)
        columns["projection_rank"] = projection_rank
        columns["probe_predicted"] = np.where(ranks(probe_accuracy) == 0, label, (label + 1) % N_CLASSES)
    return columns


def donor_columns(columns: dict[str, np.ndarray], *, follows: float, seed: int) -> dict[str, np.ndarray]:
    """A shuffle's donor columns: a permutation, and donors' own predictions that the output
    equals for a share `follows` of the examples (as a late shuffle's CLS-only readout does)."""
    rng = np.random.default_rng(seed)
    n = len(columns["label"])
    agree = rng.random(n) < follows
    return {
        "donor": rng.permutation(n),
        "donor_predicted": np.where(agree, columns["predicted"], (columns["predicted"] + 3) % N_CLASSES),
    }


def write_cell(
    sweep_dir: Path,
    *,
    sweep_id: str,
    model: str,
    n_layers: int,
    layer: int,
    intervention: str,
    readout: str,
    seed: int,
    accuracy: float,
    n_val: int = N_VAL,
) -> dict[str, Any]:
    """One complete cell: outcomes.csv, then result.json (the order the real cell uses)."""
    name = cell_name(model, layer, intervention, readout, seed)
    folder = sweep_dir / subdir(model, name, sweep_id)
    folder.mkdir(parents=True)
    none = intervention == "none"
    shuffle = intervention.partition("@")[0] == "shuffle"
    depth = layer / n_layers
    columns = outcomes(
        accuracy,
        n_val=n_val,
        seed=seed * 1000 + layer,
        probe_accuracy=0.3 + 0.6 * depth if none else None,
        projection_accuracy=0.1 + 0.8 * depth**2 if none else None,
    )
    if shuffle:
        columns |= donor_columns(columns, follows=depth, seed=seed * 1000 + layer)
    _write_csv(folder / "outcomes.csv", columns)
    rank = columns["rank"]
    metrics = {"accuracy": float(np.mean(rank == 0)), "top5": float(np.mean(rank < 5)), "chance": 1 / N_CLASSES}
    if shuffle:
        metrics |= {
            "donor_accuracy": float(np.mean(columns["predicted"] == columns["label"][columns["donor"]])),
            "donor_agreement": float(np.mean(columns["predicted"] == columns["donor_predicted"])),
            # what later probes recover: the unmodified probe curve, less what the shuffle took
            "probe_after": {
                str(later): 0.3 + 0.6 * later / n_layers - 0.3 * (1 - depth) for later in range(layer + 1, n_layers + 1)
            },
        }
    if none:
        projection_rank = columns["projection_rank"]
        metrics |= {
            "probe_accuracy": float(np.mean(columns["probe_predicted"] == columns["label"])),
            "last_probe_accuracy": 0.1 + 0.85 * depth**3,
            "projection_accuracy": float(np.mean(projection_rank == 0)),
            "projection_top5": float(np.mean(projection_rank < 5)),
            "identifiability": float(np.mean(1 - projection_rank / N_CLASSES)),
            "identifiability_exact": float(np.mean(1 - projection_rank / (N_CLASSES - 1))),
        }
    record = {
        **_identity(sweep_id, model, n_layers, layer, intervention, readout, seed),
        "status": "complete",
        "metrics": metrics,
        "counts": {"n_train": 1000, "n_val": n_val, "n_classes": N_CLASSES},
        "unit": f"cells-{model}",
        # a share of the unit's blocks: fractional, as real records' are
        "compute": {
            "block_calls": (n_layers - layer) * n_val + 1 / 3,
            "resumed_rows": 0,
            "device": "cpu",
            "dtype": "float32",
            "batch_size": 128,
            "cpu_threads": 2,
        },
        "timings": {"prepare_s": 0.1, "measure_s": 0.2, "total_s": 0.3 + 0.01 * layer},
        "artifacts": {"images": "i" * 24, "features": "f" * 24},
        "versions": {"sweep": "0.1.0", "git_commit": "abc123", "model_revision": f"{model}-rev"},
        "outcomes_file": "outcomes.csv",
    }
    (folder / "result.json").write_text(json.dumps(record, indent=2))
    return record


def write_failed_cell(
    sweep_dir: Path,
    *,
    sweep_id: str,
    model: str,
    n_layers: int,
    layer: int,
    intervention: str,
    readout: str,
    seed: int,
    error: str,
) -> dict[str, Any]:
    """A cell that raised: a record with status "failed", its error and traceback, a log."""
    name = cell_name(model, layer, intervention, readout, seed)
    folder = sweep_dir / subdir(model, name, sweep_id)
    folder.mkdir(parents=True)
    (folder / "run.log").write_text(f"[ERROR] {error}\n")
    record = {
        **_identity(sweep_id, model, n_layers, layer, intervention, readout, seed),
        "status": "failed",
        "error": error,
        "traceback": f"Traceback (most recent call last):\n  ...\n{error}\n",
        "versions": {"sweep": "0.1.0", "git_commit": "abc123"},
    }
    (folder / "result.json").write_text(json.dumps(record, indent=2))
    return record


def _identity(
    sweep_id: str, model: str, n_layers: int, layer: int, intervention: str, readout: str, seed: int
) -> dict[str, Any]:
    """`intervention` as cell names write it: `shuffle@patches` is a shuffle of the patches,
    `knockout@cls_to_patches+after` a knockout of that edge and span."""
    name = cell_name(model, layer, intervention, readout, seed)
    intervention, _, named = intervention.partition("@")
    settings: dict[str, Any] = {"name": intervention}
    token = None
    if intervention == "shuffle":
        token = named or "cls"
        settings |= {"group_size": 128, "permutation": "derangement", "token": token}
    if intervention == "knockout":
        edge, span = named.split("+")
        settings |= {"edge": edge, "span": span}
    return {
        "cell_id": cell_id(name, sweep_id),
        "name": name,
        "sweep_id": sweep_id,
        "model": model,
        "layer": layer,
        "n_layers": n_layers,
        "intervention": intervention,
        "token": token,
        "readout": readout,
        "seed": seed,
        "config": {
            "format": IDENTITY_FORMAT,
            "layer": layer,
            "seed": seed,
            "readout": readout,
            "model": {"name": model, "n_layers": n_layers, "preprocess": {"std": [0.5, 0.5, 0.5]}},
            "intervention": settings,
            "probe": {"method": "ridge", "settings": {"alpha": 1.0}},
            "data": {"name": "digits", "val_per_class": 20},
            "compute": {"dtype": "float32", "attn_implementation": "sdpa", "flush_denormal": True},
        },
    }


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    names = list(columns)
    rows = zip(*(columns[n].tolist() for n in names))
    path.write_text(
        ",".join(["example", *names])
        + "\n"
        + "".join(",".join(map(str, (i, *row))) + "\n" for i, row in enumerate(rows))
    )


def shuffle_accuracy(readout: str, depth: float, seed: int) -> float:
    """The study's picture: the native readout recovers early shuffles; the CLS-only
    readout falls to chance by the last layer."""
    base = 0.9 - 0.5 * depth**2 if readout == "native" else 0.9 - 0.8 * depth
    return round(base + 0.02 * seed, 3)


def make_sweep(
    root: Path,
    *,
    sweep_id: str = "fake",
    models: dict[str, int] = MODELS,
    interventions: tuple[str, ...] = ("none", "shuffle"),
    readouts: tuple[str, ...] = ("native", "cls"),
    seeds: tuple[int, ...] = SEEDS,
    controls: tuple[str, ...] = CONTROLS,
    tokens: tuple[str, ...] = (),
    problems: bool = True,
) -> FakeSweep:
    """A sweep: models x all layers x interventions x readouts x seeds, plus `controls`
    (native readout, seed 0) and a shuffle of each of `tokens` besides the CLS
    (`shuffle@<token>`, every readout and seed). With `problems`: one failed cell and one
    planned cell that never wrote a record, both listed in plan.json."""
    sweep = FakeSweep(sweep_dir=root / sweep_id, sweep_id=sweep_id)
    sweep.sweep_dir.mkdir(parents=True)
    grid = [
        (m, n, layer, i, r, s)
        for m, n in models.items()
        for layer in range(n + 1)
        for i in interventions
        for r in readouts
        for s in seeds
    ]
    grid += [(m, n, layer, c, "native", 0) for m, n in models.items() for layer in range(n + 1) for c in controls]
    grid += [
        (m, n, layer, f"shuffle@{t}", r, s)
        for m, n in models.items()
        for layer in range(n + 1)
        for t in tokens
        for r in readouts
        for s in seeds
    ]
    for model, n_layers, layer, intervention, readout, seed in grid:
        depth = layer / n_layers
        accuracy = {
            "none": 0.95,
            "shuffle": shuffle_accuracy(readout, depth, seed),
            "zero": 0.9 - 0.7 * depth,
            "mean": 0.92 - 0.6 * depth,
        }.get(intervention, round(0.15 + 0.7 * depth + 0.02 * seed, 3))  # a token shuffle: the patches' picture
        sweep.records.append(
            write_cell(
                sweep.sweep_dir,
                sweep_id=sweep_id,
                model=model,
                n_layers=n_layers,
                layer=layer,
                intervention=intervention,
                readout=readout,
                seed=seed,
                accuracy=accuracy,
            )
        )
    planned = [(r["model"], r["name"]) for r in sweep.records]
    if problems:
        model, n_layers = list(models.items())[-1]
        failed = write_failed_cell(
            sweep.sweep_dir,
            sweep_id=sweep_id,
            model=model,
            n_layers=n_layers,
            layer=2,
            intervention="noise",
            readout="native",
            seed=0,
            error="RuntimeError: CUDA out of memory",
        )
        sweep.records.append(failed)
        sweep.failed_name = failed["name"]
        sweep.missing_name = cell_name(model, 1, "noise", "native", 0)
        planned += [(model, failed["name"]), (model, sweep.missing_name)]
    plan = {
        "sweep_id": sweep_id,
        "cells": [
            {"name": name, "cell_id": cell_id(name, sweep_id), "subdir": subdir(model, name, sweep_id)}
            for model, name in planned
        ],
    }
    (sweep.sweep_dir / "plan.json").write_text(json.dumps(plan, indent=2))
    return sweep
