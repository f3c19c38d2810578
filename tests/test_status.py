"""`sweep-status`: the cells of a sweep by state, as a person reads them."""

from __future__ import annotations

import json

from test_cell_state import folder  # a cell folder with a record and/or a lease

from sweep.cell_state import cell_state
from sweep.status import main


def test_sweep_status_counts_and_lists(tmp_path, capsys):
    folder(tmp_path, "a", {"cell_id": "1", "status": "complete"})
    folder(tmp_path, "b", {"cell_id": "2", "status": "failed", "error": "ValueError: boom"})
    try:
        main([str(tmp_path), "cells=true"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "2 cells: 1 done, 1 failed" in out and "FAILED  b: ValueError: boom" in out


def test_an_unparsable_record_is_corrupt_and_named_with_its_path(tmp_path, capsys):
    cell = folder(tmp_path, "broken")
    (cell / "result.json").write_text('{"cell_id": "x", "status": "compl')
    assert cell_state(cell, "x") == "corrupt"
    try:
        main([str(tmp_path)])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "1 cells: 1 corrupt" in out and f"CORRUPT broken: {cell / 'result.json'} cannot be parsed" in out


def test_cells_taken_from_another_sweep_count_as_done(tmp_path, capsys):
    elsewhere = folder(tmp_path / "old", "a", {"cell_id": "1", "status": "complete"})
    sweep_dir = tmp_path / "new"
    sweep_dir.mkdir()
    (sweep_dir / "plan.json").write_text(
        json.dumps(
            {
                "sweep_id": "new",
                "cells": [
                    {"name": "a", "cell_id": "1", "subdir": "m/a", "record_dir": str(elsewhere)},
                    {"name": "b", "cell_id": "2", "subdir": "m/b"},
                ],
            }
        )
    )
    try:
        main([str(sweep_dir)])
    except SystemExit:
        pass
    assert "2 cells: 1 done, 1 pending" in capsys.readouterr().out


def test_a_bad_command_line_says_what_is_valid(tmp_path, capsys):
    for argv, message in (
        ([str(tmp_path), "cells=maybe"], "cells=maybe is invalid: it must be true or false"),
        ([str(tmp_path), "--cells"], "settings are key=value (cells)"),
        ([], "which sweep? give its folder"),
        ([str(tmp_path / "nowhere")], "is not a folder; sweeps live in multirun/<sweep id>"),
    ):
        try:
            main(argv)
        except SystemExit as exit_:
            assert exit_.code == 2
        error = capsys.readouterr().err
        assert message in error and "usage: sweep-status" in error, error


def test_every_record_in_the_folder_counts_not_only_the_latest_launchs_plan(tmp_path, capsys):
    """Two launches into one sweep folder, two cells each: plan.json names the second's."""
    for name, cell_id in (("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")):
        folder(tmp_path, name, {"cell_id": cell_id, "status": "complete"})
    (tmp_path / "plan.json").write_text(
        json.dumps(
            {
                "sweep_id": "s",
                "cells": [
                    {"name": "c", "cell_id": "3", "subdir": "m/c"},
                    {"name": "d", "cell_id": "4", "subdir": "m/d"},
                ],
            }
        )
    )
    try:
        main([str(tmp_path)])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "4 cells: 4 done" in out, out
    assert (
        f"compared to the latest launch's plan ({tmp_path / 'plan.json'}: 2 cells), and 2 more cell folders "
        "from earlier launches" in out
    ), out


def test_a_long_error_is_shortened_at_a_word_not_mid_word(tmp_path, capsys):
    error = "RuntimeError: " + "the connection to the server was refused " * 12
    folder(tmp_path, "b", {"cell_id": "2", "status": "failed", "error": error})
    try:
        main([str(tmp_path)])
    except SystemExit:
        pass
    line = next(line for line in capsys.readouterr().out.splitlines() if "FAILED" in line)
    shown = line.split("FAILED  b: ", 1)[1]
    assert shown.endswith("…") and error.startswith(shown[:-1]) and error[len(shown) - 1] == " ", shown


def test_an_unreadable_plan_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "plan.json").write_text("{ torn")
    try:
        main([str(tmp_path)])
    except SystemExit as exit:
        assert exit.code == 1
    else:
        raise AssertionError("an unreadable plan.json must end sweep-status with exit 1")
    err = capsys.readouterr().err
    assert f"cannot read {tmp_path / 'plan.json'}" in err and "Traceback" not in err
