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
