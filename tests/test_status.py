"""Cell states read from folders alone, as `sweep-status` shows them."""

from __future__ import annotations

import json
import os
import socket

from sweep.status import cell_state, main


def folder(tmp_path, name, record=None, started_pid=None):
    cell = tmp_path / "m" / name
    cell.mkdir(parents=True)
    if record is not None:
        (cell / "result.json").write_text(json.dumps(record))
    if started_pid is not None:
        (cell / "started.json").write_text(json.dumps({"host": socket.gethostname(), "pid": started_pid}))
    return cell


def test_states(tmp_path):
    assert cell_state(folder(tmp_path, "done", {"cell_id": "x", "status": "complete"}), "x") == "done"
    assert cell_state(folder(tmp_path, "failed", {"cell_id": "x", "status": "failed"}), "x") == "failed"
    assert cell_state(folder(tmp_path, "running", started_pid=os.getpid())) == "running"
    assert cell_state(folder(tmp_path, "killed", started_pid=2**22 + 12345)) == "killed"
    assert cell_state(folder(tmp_path, "pending")) == "pending"
    other = folder(tmp_path, "stale", {"cell_id": "old", "status": "complete"})
    assert cell_state(other, "new") == "pending"  # a record of another cell does not count


def test_sweep_status_counts_and_lists(tmp_path, capsys):
    folder(tmp_path, "a", {"cell_id": "1", "status": "complete"})
    folder(tmp_path, "b", {"cell_id": "2", "status": "failed", "error": "ValueError: boom"})
    try:
        main([str(tmp_path), "--cells"])
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


def test_a_zombie_owner_is_killed_not_running(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.05)  # exited, not reaped: kill(pid, 0) still succeeds
        assert cell_state(folder(tmp_path, "zombie", started_pid=child.pid)) == "killed"
    finally:
        child.wait()


def test_cells_taken_from_another_sweep_count_as_done(tmp_path, capsys):
    elsewhere = folder(tmp_path / "old", "a", {"cell_id": "1", "status": "complete"})
    sweep_dir = tmp_path / "new"
    sweep_dir.mkdir()
    (sweep_dir / "plan.json").write_text(json.dumps({"sweep_id": "new", "cells": [
        {"name": "a", "cell_id": "1", "subdir": "m/a", "record_dir": str(elsewhere)},
        {"name": "b", "cell_id": "2", "subdir": "m/b"}]}))
    try:
        main([str(sweep_dir)])
    except SystemExit:
        pass
    assert "2 cells: 1 done, 1 pending" in capsys.readouterr().out
