"""A cell's state, read from its folder alone: the one definition behind the planner,
`sweep-status` and `sweep-aggregate`."""

from __future__ import annotations

import json
import os
import socket

from sweep.cell_state import cell_state, read_state, stale_progress


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


def test_a_failed_cell_that_another_launch_re_runs_is_running_not_failed(tmp_path):
    # its owner lives: planning it again would measure it twice
    cell = folder(tmp_path, "rerun", {"cell_id": "x", "status": "failed", "error": "boom"}, started_pid=os.getpid())
    state = read_state(cell, "x")
    assert state.state == "running" and state.live and f"pid {os.getpid()}" in state.owner
    # a complete record wins over a lease not yet released; the live owner is still known
    done = folder(tmp_path, "done", {"cell_id": "x", "status": "complete"}, started_pid=os.getpid())
    assert read_state(done, "x").state == "done" and read_state(done, "x").live


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


def test_a_complete_cells_leftover_checkpoint_is_stale_unless_a_live_owner_holds_it(tmp_path):
    # a kill between writing the record and removing the checkpoint leaves this behind
    done = folder(tmp_path, "done", {"cell_id": "x", "status": "complete"}, started_pid=2**22 + 12345)
    (done / "progress.safetensors").write_bytes(b"checkpoint")
    assert stale_progress(done, "x") == done / "progress.safetensors"
    rerun = folder(tmp_path, "forced", {"cell_id": "x", "status": "complete"}, started_pid=os.getpid())
    (rerun / "progress.safetensors").write_bytes(b"checkpoint")
    assert stale_progress(rerun, "x") is None  # a live owner (a forced re-run) still needs it
    running = folder(tmp_path, "running", started_pid=2**22 + 12345)
    (running / "progress.safetensors").write_bytes(b"checkpoint")
    assert stale_progress(running) is None  # no record: the checkpoint is what a re-launch resumes from
