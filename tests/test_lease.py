"""sweep.lease: one live owner per running cell, dead owners taken over, taking is atomic."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import fill, read_only, small_disk

from sweep import lease as leases
from sweep.cell_state import cell_state
from sweep.files import WriteFailed
from sweep.layout import LEASE_FILE
from sweep.lease import Lease, LeaseHeld, pid_alive, read_lease, why_free

FAR_PID = 2**22 + 12345  # above any pid_max: never a live process


def write_lease(cell: Path, **fields) -> None:
    cell.mkdir(parents=True, exist_ok=True)
    (cell / LEASE_FILE).write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": FAR_PID,
                "heartbeat": time.time(),
                "stale_after_s": 60,
                "released": None,
                "token": "theirs",
                **fields,
            }
        )
    )


def take(cell: Path, **settings) -> Lease:
    return Lease.acquire(cell, **{"stale_after_s": 60, "heartbeat_s": 10, **settings})


def test_a_live_owner_keeps_its_lease_and_a_dead_one_loses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "queued_slurm_jobs", lambda: frozenset({"77"}))
    write_lease(tmp_path / "alive", pid=os.getpid())
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()} on"):
        take(tmp_path / "alive")
    write_lease(tmp_path / "other-host", host="node-elsewhere")  # its pid cannot be checked from here
    with pytest.raises(LeaseHeld):
        take(tmp_path / "other-host")
    write_lease(tmp_path / "queued", host="node-elsewhere", slurm_job_id="77")
    with pytest.raises(LeaseHeld):
        take(tmp_path / "queued")

    cases = {
        "gone": {},
        "released": {"pid": os.getpid(), "released": time.time()},
        "stale": {"host": "node-elsewhere", "heartbeat": time.time() - 61},
        "left-the-queue": {"host": "node-elsewhere", "slurm_job_id": "78"},
    }
    for name, fields in cases.items():
        write_lease(tmp_path / name, **fields)
        assert why_free(read_lease(tmp_path / name)) is not None, name
        lease = take(tmp_path / name)
        assert read_lease(tmp_path / name)["token"] == lease.content["token"]
        lease.release()
    assert "from before leases" in why_free({"host": "node-elsewhere", "pid": 1})  # would block it forever
    assert "is gone" in why_free({"host": socket.gethostname(), "pid": FAR_PID})
    assert "no longer queued" in why_free({"host": "x", "slurm_job_id": "78"})
    assert "no heartbeat for" in why_free(
        {"host": "x", "token": "t", "heartbeat": time.time() - 61, "stale_after_s": 60}
    )


def test_taking_over_from_a_dead_owner_removes_the_temporaries_of_its_interrupted_writes(tmp_path):
    """A unit SIGKILLed (or its node lost) inside an atomic write of a checkpoint or record
    leaves `.<file>.<random>.tmp` in the cell's folder; nothing else ever removes it. The
    owner that takes the lease over is the folder's only writer, so it removes them; an
    owner that is only silent (a stale heartbeat, perhaps alive behind a network
    partition) may still be writing, so its temporaries stay."""
    cells = {"dead": {}, "silent": {"host": "node-elsewhere", "heartbeat": time.time() - 61}}
    for name, fields in cells.items():
        write_lease(tmp_path / name, **fields)
        for half_written in (".progress.safetensors.0a1b2c3d4e5f.tmp", ".result.json.0a1b2c3d4e5f.tmp"):
            (tmp_path / name / half_written).write_bytes(b"half")
        take(tmp_path / name).release()
    assert not list((tmp_path / "dead").glob(".*.tmp"))
    assert len(list((tmp_path / "silent").glob(".*.tmp"))) == 2
    assert (tmp_path / "dead" / LEASE_FILE).exists()  # the new owner's lease, released: the cell's history


def test_a_requeued_slurm_job_takes_over_its_own_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "queued_slurm_jobs", lambda: frozenset({"77"}))  # requeued: still in the queue
    write_lease(tmp_path, host="node-elsewhere", slurm_job_id="77", slurm_restart_count=None)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(LeaseHeld):  # the same run of the job: not a requeue
        take(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lease = take(tmp_path)
    assert read_lease(tmp_path)["slurm_restart_count"] == "1"
    lease.release()


def test_a_preempted_slurm_task_waiting_in_the_queue_keeps_its_cells_on_its_own_node(tmp_path, monkeypatch):
    """A re-launch on the node where a preempted task ran finds its process gone and its
    heartbeat silent, yet the task waits in the queue to be requeued: its lease is held.
    `squeue` is a stand-in script on PATH (SLURM is not installed on the test machines, and
    the local cluster cannot hold a preempted task pending on demand); it prints the queue as
    `squeue --format=%A` does, so the real subprocess call and its parsing run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\necho 77\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(leases, "_squeue_cache", (float("-inf"), None))
    cell = tmp_path / "cell"
    write_lease(cell, pid=FAR_PID, slurm_job_id="77", heartbeat=time.time() - 3600)  # this host, pid gone
    assert why_free(read_lease(cell)) is None
    with pytest.raises(LeaseHeld):
        take(cell)
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # within that very job (an allocation), its dead process lets go
    assert "its process" in why_free(read_lease(cell)) and "is gone" in why_free(read_lease(cell))
    monkeypatch.delenv("SLURM_JOB_ID")
    squeue.write_text("#!/bin/sh\necho 78\n")  # it left the queue: now its cells are free
    monkeypatch.setattr(leases, "_squeue_cache", (float("-inf"), None))
    assert "SLURM job 77 is no longer queued" in why_free(read_lease(cell))


def test_the_heartbeat_refreshes_the_lease_and_release_keeps_it_as_history(tmp_path):
    lease = take(tmp_path, heartbeat_s=0.1)
    first = read_lease(tmp_path)
    time.sleep(0.6)
    assert read_lease(tmp_path)["heartbeat"] > first["heartbeat"]
    assert cell_state(tmp_path) == "running"
    lease.release()
    released = read_lease(tmp_path)
    assert released["released"] is not None and released["pid"] == first["pid"]
    assert cell_state(tmp_path) == "pending"
    take(tmp_path).release(forget=True)  # bad input: the cell never really started
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_lease_is_let_go_on_a_full_disk_and_one_that_cannot_be_written_names_its_file(tmp_path):
    """On a full disk (a real tmpfs, filled) the released lease cannot be written: it is
    removed instead, so the cell is not shown as held by a process that has let it go. On a
    read-only folder the lease cannot be taken: WriteFailed names started.json."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk, "1m"):
        lease = take(disk / "cell")
        fill(disk)
        lease.release()
        assert not (disk / "cell" / LEASE_FILE).exists()
        assert cell_state(disk / "cell") == "pending"
    archive = tmp_path / "archive"
    (archive / "cell").mkdir(parents=True)
    with read_only(archive), pytest.raises(WriteFailed, match=rf"^could not write {archive}/cell/{LEASE_FILE}: "):
        take(archive / "cell")


def test_a_lease_taken_over_is_not_refreshed_by_its_old_owner(tmp_path):
    lease = take(tmp_path)
    write_lease(tmp_path, host="node-elsewhere", token="new-owner")
    assert lease.refresh() is False
    lease.release()
    assert read_lease(tmp_path)["token"] == "new-owner"  # release leaves the new owner's lease alone


def test_a_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    try:
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        assert not pid_alive(child.pid)
    finally:
        child.wait()


RACER = """
import sys, time
from sweep.lease import Lease, LeaseHeld
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    lease = Lease.acquire(sys.argv[1], stale_after_s=60, heartbeat_s=10)
except LeaseHeld:
    print("held")
else:
    print("won")
    time.sleep(1.5)
    lease.release()
"""


def test_processes_racing_for_one_lease_give_it_to_exactly_one(tmp_path):
    write_lease(tmp_path, pid=FAR_PID)  # a dead owner: every racer sees a lease to take over
    start = time.time() + 5  # every racer has imported sweep.lease by then
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert sorted(outputs) == ["held"] * 5 + ["won"], outputs
