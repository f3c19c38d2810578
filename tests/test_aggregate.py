"""sweep.aggregate: a sweep's records as one table, from the cell folders or from W&B."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
from fake_sweep import make_sweep

from sweep.aggregate import (
    SourceError,
    interval_pivot,
    load_local,
    load_wandb,
    read_results,
    summary_text,
    write_results,
)
from sweep.aggregate_cli import main
from sweep.intervals import summary_interval
from sweep.record import COLUMNS, parse_probe_after, record_row


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweeps"))


@pytest.fixture(scope="module")
def table(sweep):
    return load_local(sweep.sweep_dir)


def test_record_row_is_flat_json_scalars_in_column_order(sweep):
    shuffle = next(r for r in sweep.records if r["intervention"] == "shuffle")
    row = record_row(shuffle)
    assert list(row) == list(COLUMNS)
    assert json.loads(json.dumps(row)) == row  # what a W&B summary can hold
    assert row["permutation"] == "derangement" and row["probe_method"] == "ridge"
    assert row["accuracy"] == shuffle["metrics"]["accuracy"]
    assert row["probe_accuracy"] is None  # only none cells carry the probe
    assert row["donor_agreement"] == shuffle["metrics"]["donor_agreement"]
    # the probe_after vector is one JSON cell, read back layer by layer
    assert parse_probe_after(row["probe_after"]) == {int(k): v for k, v in shuffle["metrics"]["probe_after"].items()}
    assert list(parse_probe_after(row["probe_after"])) == sorted(parse_probe_after(row["probe_after"]))
    assert row["git_commit"] == "abc123" and row["error"] is None


def test_record_row_of_a_failed_record_keeps_the_error_and_leaves_metrics_empty(sweep):
    failed = next(r for r in sweep.records if r["status"] == "failed")
    row = record_row(failed)
    assert row["status"] == "failed" and row["error"] == "RuntimeError: CUDA out of memory"
    assert row["accuracy"] is None and row["n_val"] is None


def test_record_row_rejects_what_is_not_a_record():
    with pytest.raises(ValueError, match="not a cell record.*cell_id"):
        record_row({"metrics": {"accuracy": 1.0}})


def test_local_table_has_one_row_per_record_in_canonical_order(sweep, table):
    frame = table.frame
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(sweep.records)
    assert set(frame["name"]) == sweep.names
    keys = frame[["model", "intervention", "readout", "seed", "layer"]].astype(str).agg("|".join, axis=1)
    sorted_frame = frame.sort_values(["model", "intervention", "readout", "seed", "layer"], kind="mergesort")
    assert list(frame.index) == list(sorted_frame.index), "rows are sorted by model, intervention, readout, seed, layer"
    assert keys.is_unique
    assert table.sweep_id == sweep.sweep_id


def test_failed_and_missing_cells_are_reported(sweep, table):
    assert list(table.failed["name"]) == [sweep.failed_name]
    assert table.failed["error"].iloc[0] == "RuntimeError: CUDA out of memory"
    assert sweep.failed_name in table.failed["folder"].iloc[0]
    assert list(table.missing["name"]) == [sweep.missing_name]


def test_outcomes_are_per_cell_and_read_on_demand(sweep, table):
    none = table.complete[table.complete["intervention"] == "none"].iloc[0]
    outcomes = table.outcomes[none["cell_id"]]
    assert len(outcomes) == none["n_val"]
    assert (outcomes["rank"] == 0).mean() == pytest.approx(none["accuracy"])
    assert (outcomes["probe_predicted"] == outcomes["label"]).mean() == pytest.approx(none["probe_accuracy"])
    failed_id = table.frame.loc[table.frame["status"] == "failed", "cell_id"].iloc[0]
    assert failed_id not in table.outcomes


def test_the_summary_shows_each_mean_over_seeds_with_the_half_width_of_its_interval(table):
    complete = table.complete
    point = complete[
        (complete["model"] == "tiny_b")
        & (complete["intervention"] == "shuffle")
        & (complete["readout"] == "native")
        & (complete["layer"] == 3)
    ]
    expected = summary_interval(point["accuracy"], 200, seeded=True)  # 2 seeds of 200 images
    assert expected.seeds == 2 and expected.seed_variance > 0
    assert interval_pivot(complete).loc[("tiny_b", "shuffle/native"), 3] == pytest.approx(expected.half_width)

    intervals = summary_text(table).split("± in points")[1].splitlines()
    shuffle = next(line for line in intervals if line.startswith("tiny_b  shuffle/native"))
    assert shuffle.split()[3 + 3] == f"{100 * expected.half_width:.1f}"  # model, series, cells, L0..L3
    # one seed of a seeded series cannot show the spread between seeds; tiny_a has no L4
    assert next(line for line in intervals if line.startswith("tiny_a  zero/native")).endswith("   ?   ?   ?   ?   -")


def test_results_files_hold_the_frame(table, tmp_path):
    written = write_results(table, tmp_path / "out")
    assert [p.name for p in written] == ["results.csv", "results.parquet"]
    for path in written:
        pd.testing.assert_frame_equal(read_results(path), table.frame)
    assert not list((tmp_path / "out").glob(".*tmp")), "written through a temporary name, then renamed"


# No W&B server can run here, so these stand in for the Run objects of `wandb.Api().runs`
# with the attributes aggregation reads: summary, config, name, id, state, group.
def wandb_run(record, *, sweep_id, state="finished"):
    summary = {**record_row(record), "_runtime": 12.5, "_timestamp": 1.7e9, "_step": 0, "_wandb": {"runtime": 12}}
    config = {"layer": record["layer"], "seed": record["seed"], "identity": record.get("config")}  # as the tracker logs
    return SimpleNamespace(
        summary=summary, config=config, name=record["name"], id=record["cell_id"][:8], state=state, group=sweep_id
    )


def test_wandb_runs_give_the_same_table_as_the_folders(sweep, table):
    runs = [
        wandb_run(r, sweep_id=sweep.sweep_id, state="failed" if r["status"] == "failed" else "finished")
        for r in reversed(sweep.records)
    ]  # API order is not folder order
    runs.append(
        SimpleNamespace(
            summary={"_runtime": 3},
            config={},
            name="tiny_b-L00-noise-native-s1",
            id="r1",
            state="running",
            group=sweep.sweep_id,
        )
    )
    other = next(r for r in sweep.records if r["status"] == "complete")
    runs.append(wandb_run(other, sweep_id="another-sweep"))

    from_wandb = load_wandb(runs, sweep.sweep_id)

    pd.testing.assert_frame_equal(from_wandb.frame, table.frame)
    assert list(from_wandb.failed["name"]) == [sweep.failed_name]
    assert list(from_wandb.missing["name"]) == ["tiny_b-L00-noise-native-s1"]
    assert from_wandb.outcomes is None  # the figures' bands bound the examples' part from the records


def test_wandb_runs_of_two_configurations_of_one_series_are_refused_like_records(tmp_path):
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), readouts=("native",), controls=(), problems=False)
    runs = [wandb_run(r, sweep_id=small.sweep_id) for r in small.records]
    identity = runs[-1].config["identity"]
    runs[-1].config["identity"] = {**identity, "compute": {**identity["compute"], "dtype": "bfloat16"}}
    with pytest.raises(SourceError, match=r"(?s)W&B group .*: compute.dtype = 'float32' \(2 cells.*'bfloat16'"):
        load_wandb(runs, small.sweep_id)


def test_a_wandb_run_that_crashed_before_logging_is_reported_failed(sweep):
    crashed = SimpleNamespace(
        summary={"_runtime": 3},
        config={},
        name="tiny_a-L01-zero-native-s0",
        id="c1",
        state="crashed",
        group=sweep.sweep_id,
    )
    table = load_wandb([crashed], sweep.sweep_id)
    assert table.frame.empty and list(table.frame.columns) == list(COLUMNS)
    assert "crashed" in table.failed["error"].iloc[0]


def test_aggregation_and_plotting_do_not_import_torch():
    # they run on login nodes and laptops that have only the records
    code = "import sys, sweep.aggregate, sweep.plotting; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def _copy_cell(record: dict, sweep_dir, *, cell_id: str, **intervention) -> dict:
    """The same grid point measured with other intervention settings (an edited YAML file)."""
    changed = json.loads(json.dumps(record))
    changed["cell_id"] = cell_id
    changed["config"]["intervention"].update(intervention)
    folder = sweep_dir / record["model"] / f"{record['name']}-{cell_id[:8]}"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(changed))
    return changed


def test_records_of_two_configurations_of_one_series_are_refused_naming_the_setting(tmp_path, capsys):
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0, 1), readouts=("native",), controls=(), problems=False)
    shuffles = [r for r in small.records if r["intervention"] == "shuffle" and r["layer"] == 1]
    identity = _copy_cell(shuffles[0], small.sweep_dir, cell_id="1" * 16, permutation="identity")
    with pytest.raises(SourceError) as refused:
        load_local(small.sweep_dir)
    message = str(refused.value)
    assert "tiny_a/shuffle/native" in message and "intervention.permutation = 'derangement' (" in message
    assert f"'identity' (1 cell: {identity['name']}-11111111)" in message and "sweep.name" in message
    assert main([str(small.sweep_dir), "figures=false"]) == 1
    assert "different configurations" in capsys.readouterr().err
    assert not (small.sweep_dir / "results.csv").exists()


def test_other_seeds_of_another_configuration_are_refused_too(tmp_path):
    # seed 1 of the identity "shuffle" next to seed 0 of the derangement: the mean over seeds would mix them
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), readouts=("native",), controls=(), problems=False)
    shuffle = next(r for r in small.records if r["intervention"] == "shuffle")
    moved = {**shuffle, "seed": 1, "name": shuffle["name"].replace("-s0", "-s1")}
    _copy_cell(moved, small.sweep_dir, cell_id="2" * 16, permutation="identity")
    with pytest.raises(SourceError, match="intervention.permutation"):
        load_local(small.sweep_dir)


@pytest.mark.parametrize(
    "setting, value",
    [("model.preprocess.std", [0.6, 0.6, 0.6]), ("compute.dtype", "bfloat16"), ("toy_training.epochs", 3)],
)
def test_cells_of_one_series_at_different_layers_from_two_configurations_are_refused(tmp_path, setting, value):
    """Layer 0 of one model YAML and layer 1 of an edited one must not be drawn as one curve:
    the records carry their whole identity, so any setting of it is compared."""
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), readouts=("native",), controls=(), problems=False)
    edited = next(r for r in small.records if r["intervention"] == "shuffle" and r["layer"] == 1)
    path = next(small.sweep_dir.rglob(f"{edited['name']}-*")) / "result.json"
    record = json.loads(path.read_text())
    node = record["config"]
    *parents, leaf = setting.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    path.write_text(json.dumps(record))
    with pytest.raises(SourceError, match=rf"tiny_a/shuffle/native: {re.escape(setting)} = "):
        load_local(small.sweep_dir)


def test_one_grid_point_with_two_cells_is_refused_even_when_the_records_show_no_difference(tmp_path):
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), readouts=("native",), controls=(), problems=False)
    _copy_cell(small.records[0], small.sweep_dir, cell_id="3" * 16)  # e.g. another dtype or toy training
    with pytest.raises(SourceError, match="2 cells at .* differ in settings the records do not show"):
        load_local(small.sweep_dir)


def test_cells_taken_from_results_from_are_in_the_table(tmp_path):
    old = make_sweep(
        tmp_path, sweep_id="old", models={"tiny_a": 2}, seeds=(0,), readouts=("native",), controls=(), problems=False
    )
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    taken = old.records[0]
    folder = next(old.sweep_dir.rglob(f"{taken['name']}-*"))
    plan = {
        "sweep_id": "new",
        "cells": [
            {
                "name": taken["name"],
                "cell_id": taken["cell_id"],
                "subdir": f"tiny_a/{folder.name}",
                "record_dir": str(folder),
            }
        ],
    }
    (new_dir / "plan.json").write_text(json.dumps(plan))
    table = load_local(new_dir)
    assert list(table.complete["cell_id"]) == [taken["cell_id"]] and table.missing.empty


def test_knockouts_of_two_edges_are_two_series_of_one_table(tmp_path):
    """Edge and span are the knockout's labelled settings (its variant): one sweep folder may
    hold both edges, and the table shows each as its own series, where any other differing
    setting (the shuffle's permutation, above) is refused."""
    from sweep.aggregate import accuracy_pivot

    knockouts = ("knockout@patches_to_cls+after", "knockout@cls_to_patches+after")
    sweep = make_sweep(tmp_path, models={"tiny_a": 3}, seeds=(0,), controls=knockouts, problems=False)
    table = load_local(sweep.sweep_dir)
    series = set(accuracy_pivot(table.complete).index.get_level_values("series"))
    assert {"knockout@patches_to_cls+after/native", "knockout@cls_to_patches+after/native"} <= series
    assert set(table.complete["variant"].dropna()) == {"patches_to_cls+after", "cls_to_patches+after"}
