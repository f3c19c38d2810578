"""`sweep-aggregate` on the command line: what it prints and writes, and how it refuses
what it cannot act on."""

from __future__ import annotations

import json
import re

import pytest
from fake_sweep import make_sweep
from helpers import read_only

from sweep.aggregate_cli import COMMAND, main


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweeps"))


def test_cli_prints_the_table_and_the_problems_and_writes_files(sweep, tmp_path, capsys):
    out = tmp_path / "agg"
    assert main([str(sweep.sweep_dir), f"out={out}", "figures=false"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy in % by layer" in printed
    assert "tiny_a  probe" in printed and "shuffle/cls" in printed
    assert f"missing: {sweep.missing_name}" in printed
    failed_line = next(line for line in printed.splitlines() if line.startswith("failed:"))
    assert sweep.failed_name in failed_line and "(RuntimeError: CUDA out of memory)" in failed_line
    assert "run.log" in failed_line  # the log to read
    table_lines = printed.split("accuracy in % by layer")[1].split("\nmissing:")[0].splitlines()
    assert max(len(line) for line in table_lines) <= 100
    assert (out / "results.csv").exists() and (out / "results.parquet").exists()
    assert not (out / "figures").exists()


def test_cli_writes_into_the_sweep_folder_by_default(tmp_path, capsys):
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), controls=(), problems=False)
    assert main([str(small.sweep_dir)]) == 0
    printed = capsys.readouterr().out
    assert (small.sweep_dir / "results.csv").exists()
    assert "figure main_result:" in printed and (small.sweep_dir / "figures" / "main_result.png").exists()


def test_a_read_only_sweep_folder_is_read_and_its_outputs_refused_in_one_line(tmp_path, capsys):
    """An archived sweep, its folder a real read-only mount: reading it needs no write, so
    the table is printed; writing the table into it fails with one line that names the file
    and says where else to write, exit 1 and no traceback."""
    small = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), controls=(), problems=False)
    with read_only(small.sweep_dir):
        code = main([str(small.sweep_dir)])
    printed = capsys.readouterr()
    assert code == 1
    assert "accuracy in % by layer" in printed.out
    assert printed.err.strip().splitlines() == [
        f"sweep-aggregate: error: could not write {small.sweep_dir}/results.csv: Read-only file system; write the "
        "table and figures elsewhere with out=<folder>"
    ]
    assert main([str(small.sweep_dir), f"out={tmp_path / 'elsewhere'}", "figures=false"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/no/such/sweep"], "does not exist.*multirun/<sweep id>"),
        ([], "give its folder"),
        (
            ["{sweep}", "colour=red"],
            "colour is not a setting of sweep-aggregate; its settings are: source, out, figures",
        ),
        (["{sweep}", "bootstrap=1000"], "bootstrap is not a setting of sweep-aggregate"),  # bands need no resampling
        (["{sweep}", "figures=maybe"], "figures=maybe is invalid: it must be true or false"),
        (["{sweep}", "wandb.log=maybe"], "wandb.log=maybe is invalid: it must be true or false"),
        (["{sweep}", "source=s3"], "source=s3 is invalid: it must be one of local, wandb"),
        (["{sweep}", "--out", "x"], "unknown option '--out': settings are key=value"),
        (["{sweep}", "{sweep}"], "takes at most 1 positional word"),
        (["source=wandb", "sweep.name=x"], "source=wandb needs wandb.project"),
        (["{sweep}", "sweep.name=x"], "only apply to source=wandb"),
        (["{sweep}/tiny_a"], "one model's cells; give the sweep folder"),
    ],
)
def test_cli_usage_errors_exit_2_and_say_what_to_do(sweep, capsys, argv, message):
    argv = [a.replace("{sweep}", str(sweep.sweep_dir)) for a in argv]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert "usage: sweep-aggregate" in error


def test_cli_with_no_record_yet_lists_the_planned_cells_and_exits_1(tmp_path, capsys):
    sweep_dir = tmp_path / "just-launched"
    sweep_dir.mkdir()
    plan = {
        "sweep_id": "just-launched",
        "cells": [
            {"name": "vit-L00-none-native-s0", "cell_id": "0" * 16, "subdir": "vit/vit-L00-none-native-s0-00000000"}
        ],
    }
    (sweep_dir / "plan.json").write_text(json.dumps(plan))
    assert main([str(sweep_dir)]) == 1
    captured = capsys.readouterr()
    assert "missing: vit-L00-none-native-s0" in captured.out
    assert "nothing written" in captured.err and not (sweep_dir / "results.csv").exists()


def test_help_lists_every_setting_with_its_default(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: sweep-aggregate [<sweep folder>] [key=value ...]")
    for key in COMMAND.settings:
        assert f"  {key} " in printed
    assert re.search(r"  figures +draw the figures \(true or false\) \[true\]", printed)
